"""Sampling schedules: LightX2V's step-distilled Euler schedule and the official multi-step flow samplers.

A schedule is a small frozen object: `sigmas()` / `timesteps()` give the noise levels and the DiT timesteps
(spec sampling.md §1, §2.1, §4.2), `solver()` a fresh stepper `step(sample, velocity) -> sample`, `guidance(expert)`
the CFG scale, and `expert_steps(...)` which steps run on the Wan2.2 high-noise expert.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import InvalidInputError
from .unipc import UniPCSolver

NUM_TRAIN_TIMESTEPS = 1000
# The official multi-step grids start below 1: the scheduler's training table tops out at float32(0.999).
OFFICIAL_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))

# Wan2.2 A14B expert boundaries (fraction of the 1000 training timesteps), spec sampling.md §3.2.
BOUNDARY_T2V = 0.875
BOUNDARY_I2V = 0.900


def shift_sigmas(sigmas, shift: float):
    """Flow shift `shift·σ / (1 + (shift − 1)·σ)`; works on floats, numpy arrays and tensors alike."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class EulerSolver:
    """Deterministic Euler on the velocity: `x0 = x − σᵢ·v`, `x = x0 + σᵢ₊₁·v` (σ_N = 0 gives x0).

    The update runs and returns fp32; the sampling loop stores the latent in the schedule's `latent_dtype`.
    """

    def __init__(self, sigmas: list[float]):
        self.sigmas = sigmas
        self.index = 0

    def start_at(self, step: int) -> None:
        """Begin at schedule step ``step`` (a partial denoise)."""
        self.index = step

    def step(self, sample: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """sample, velocity: [B, C, F, H, W] -> the sample at the next noise level."""
        sigma, sigma_next = self.sigmas[self.index], self.sigmas[self.index + 1]
        velocity = velocity.float()
        x0 = sample.float() - sigma * velocity
        self.index += 1
        updated = x0 if sigma_next == 0 else x0 + sigma_next * velocity
        return updated


def _check_guidance(*scales: float | None) -> None:
    for scale in scales:
        if scale is not None and not scale > 0:
            raise InvalidInputError(f"guidance scale must be positive, got {scale}")


@dataclasses.dataclass(frozen=True)
class DistillSchedule:
    """LightX2V's step-distilled schedule (spec sampling.md §2): Euler on `denoising_step_list` entries of a
    shifted 1000-level table, float timesteps `σ·1000`, no fresh noise, no CFG unless `cfg > 1`.

    Attributes:
        denoising_step_list: decreasing training timesteps in (0, 1000]; default 4-step list 1000, 750, 500, 250.
        shift: flow shift of the table (5.0 in every shipped distill config).
        cfg: guidance scale; 1.0 (default) runs one conditional forward per step.
        boundary_step_index: Wan2.2 A14B only: steps before this index run on the high-noise expert.
        latent_dtype: dtype the latent is stored in between steps; torch.bfloat16 reproduces LightX2V exactly.
    """

    denoising_step_list: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    cfg: float = 1.0
    boundary_step_index: int = 2
    latent_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        steps = list(self.denoising_step_list)
        if not steps or any(int(s) != s or not 0 < s <= NUM_TRAIN_TIMESTEPS for s in steps):
            raise InvalidInputError(f"denoising_step_list {steps} must hold whole timesteps in 1..1000")
        if any(a <= b for a, b in zip(steps, steps[1:])):
            raise InvalidInputError(
                f"denoising_step_list {steps} must be strictly decreasing (e.g. 1000, 750, 500, 250)")
        if not self.shift > 0:
            raise InvalidInputError(f"shift must be positive, got {self.shift}")
        if not 0 <= self.boundary_step_index <= len(steps):
            raise InvalidInputError(f"boundary_step_index {self.boundary_step_index} is outside 0..{len(steps)}")
        _check_guidance(self.cfg)

    @property
    def num_steps(self) -> int:
        return len(self.denoising_step_list)

    def sigmas(self) -> torch.Tensor:
        """[N + 1] float32: table entries `1000 − d` of the shifted `linspace(1, 0, 1001)[:-1]`, then 0."""
        table = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float32)[:-1]
        table = shift_sigmas(table, self.shift)
        index = torch.tensor([NUM_TRAIN_TIMESTEPS - int(d) for d in self.denoising_step_list])
        return torch.cat([table[index], torch.zeros(1)])

    def timesteps(self) -> torch.Tensor:
        """[N] float32 `σ·1000`, not rounded."""
        return self.sigmas()[:-1] * NUM_TRAIN_TIMESTEPS

    def solver(self) -> EulerSolver:
        return EulerSolver(self.sigmas().tolist())

    def guidance(self, expert: int) -> float:
        return self.cfg

    def expert_steps(self, boundary: float) -> list[int]:
        """Expert per step (0 = high-noise, 1 = low-noise); `boundary` is unused (the step index decides)."""
        return [0 if i < self.boundary_step_index else 1 for i in range(self.num_steps)]


@dataclasses.dataclass(frozen=True)
class _OfficialMultiStep:
    """Shared grid of the official multi-step samplers (spec sampling.md §4.2): shifted
    `linspace(0.999, 0, N + 1)[:-1]` in float64, DiT timesteps truncated to int64, solver sigmas in float32.

    Attributes:
        steps: number of model evaluations (times two with CFG).
        shift: flow shift (official defaults: 5.0; Wan2.2 T2V-A14B 12.0; Wan2.1 I2V 480p 3.0).
        cfg: guidance scale of the single model or of the Wan2.2 high-noise expert; 1.0 turns CFG off.
        cfg_low: guidance of the Wan2.2 low-noise expert (None: same as `cfg`).
        boundary: Wan2.2 A14B: the high-noise expert runs while `t ≥ boundary·1000`; None picks 0.875 for text
            and 0.900 for image conditioning.
    """

    steps: int = 50
    shift: float = 5.0
    cfg: float = 5.0
    cfg_low: float | None = None
    boundary: float | None = None

    def __post_init__(self) -> None:
        if int(self.steps) != self.steps or self.steps < 1:
            raise InvalidInputError(f"steps must be a positive whole number, got {self.steps}")
        if not self.shift > 0:
            raise InvalidInputError(f"shift must be positive, got {self.shift}")
        if self.boundary is not None and not 0 <= self.boundary <= 1:
            raise InvalidInputError(f"boundary must lie in [0, 1], got {self.boundary}")
        _check_guidance(self.cfg, self.cfg_low)

    @property
    def num_steps(self) -> int:
        return int(self.steps)

    @property
    def latent_dtype(self) -> torch.dtype:
        """The official samplers keep the latent in fp32."""
        return torch.float32

    def _sigmas64(self) -> np.ndarray:
        grid = np.linspace(OFFICIAL_SIGMA_MAX, 0.0, self.num_steps + 1)[:-1]
        return shift_sigmas(grid, self.shift)

    def sigmas(self) -> torch.Tensor:
        """[N + 1] float32 noise levels the solver uses, ending in 0."""
        return torch.from_numpy(np.append(self._sigmas64(), 0.0).astype(np.float32))

    def timesteps(self) -> torch.Tensor:
        """[N] int64: `σ·1000` truncated (what the official code feeds the DiT and compares to the boundary)."""
        return torch.from_numpy(self._sigmas64() * NUM_TRAIN_TIMESTEPS).to(torch.int64)

    def guidance(self, expert: int) -> float:
        return self.cfg if expert == 0 or self.cfg_low is None else self.cfg_low

    def expert_steps(self, boundary: float) -> list[int]:
        """Expert per step (0 = high-noise while `t ≥ boundary·1000`, else 1); `self.boundary` wins if set."""
        boundary_t = (boundary if self.boundary is None else self.boundary) * NUM_TRAIN_TIMESTEPS
        return [0 if t >= boundary_t else 1 for t in self.timesteps().tolist()]


@dataclasses.dataclass(frozen=True)
class FlowUniPC(_OfficialMultiStep):
    """The official default solver: flow-matching UniPC, order 2, bh2, data prediction (sampling.md §4.2)."""

    def solver(self) -> UniPCSolver:
        return UniPCSolver(self.sigmas().tolist())


@dataclasses.dataclass(frozen=True)
class FlowEuler(_OfficialMultiStep):
    """Euler on the official multi-step grid (same timesteps and expert switch as `FlowUniPC`)."""

    def solver(self) -> EulerSolver:
        return EulerSolver(self.sigmas().tolist())


Schedule = DistillSchedule | FlowUniPC | FlowEuler
