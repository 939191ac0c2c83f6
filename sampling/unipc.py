"""Flow-matching UniPC (order 2, "bh2", data prediction), the official Wan multi-step solver.

Entry point: `UniPCSolver(sigmas).step(sample, velocity) -> sample`, one call per model evaluation. Formulas:
spec sampling.md §4.2, with `α(σ) = 1 − σ`, `λ(σ) = ln α − ln σ` and x₀ estimates `m = x − σ·v`. Each step first
corrects the previous predictor step (UniC) with the new x₀, then predicts the next sample (UniP).
"""

from __future__ import annotations

import math

import torch

SOLVER_ORDER = 2


def _lambda(sigma: float) -> float:
    """log-SNR λ(σ) = ln(1 − σ) − ln σ; +inf at σ = 0."""
    return math.inf if sigma == 0 else math.log(1 - sigma) - math.log(sigma)


def _coefficients(sigma_s0: float, sigma_t: float) -> tuple[float, float, float]:
    """(h, hh = −h, φ1 = expm1(hh)) for the interval σ_s0 -> σ_t. In "bh2" the scale B(h) equals φ1."""
    h = _lambda(sigma_t) - _lambda(sigma_s0)
    return h, -h, math.expm1(-h)


class UniPCSolver:
    """State of one UniPC run over fixed sigmas (float32 values, last one 0).

    The history holds the last two x₀ estimates; the order is `min(2, N − i, i + 1)` (warm-up and lower order
    at the end), so the final step returns the last x₀ estimate exactly.
    """

    def __init__(self, sigmas: list[float]):
        self.sigmas = sigmas
        self.num_steps = len(sigmas) - 1
        self.index = 0
        self.history: list[torch.Tensor] = []
        self.last_sample: torch.Tensor | None = None
        self.last_order = 0
        self.first = 0

    def start_at(self, step: int) -> None:
        """Begin at schedule step ``step`` (a partial denoise): that step is taken as the first, with no history."""
        self.index = self.first = step

    def step(self, sample: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """sample: [B, C, F, H, W] at σ_i (the predictor output, possibly re-blended by the caller); velocity:
        the model output there. Returns the sample at σ_{i+1}."""
        i = self.index
        x0 = sample - self.sigmas[i] * velocity.to(sample.dtype)
        if i > self.first:
            sample = self._correct(x0, sample)
        self.history = (self.history + [x0])[-SOLVER_ORDER:]
        order = min(SOLVER_ORDER, self.num_steps - i, i - self.first + 1)
        self.last_sample, self.last_order = sample, order
        self.index += 1
        return self._predict(sample, order)

    def _predict(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        """UniP from σ_i to σ_{i+1} with the newest x₀ (and, at order 2, the one before)."""
        i = self.index - 1
        sigma_s0, sigma_t = self.sigmas[i], self.sigmas[i + 1]
        h, _, phi_1 = _coefficients(sigma_s0, sigma_t)
        b_h = phi_1
        m0 = self.history[-1]
        alpha_t = 1 - sigma_t
        predicted = (sigma_t / sigma_s0) * sample - (alpha_t * phi_1) * m0
        if order == 2:
            r = (_lambda(self.sigmas[i - 1]) - _lambda(sigma_s0)) / h
            difference = (self.history[-2] - m0) / r
            predicted = predicted - (alpha_t * b_h * 0.5) * difference
        return predicted

    def _correct(self, x0: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """UniC for the interval just taken (σ_{i−1} -> σ_i), using the new x₀ at σ_i; order of that step."""
        i = self.index
        sigma_s0, sigma_t = self.sigmas[i - 1], self.sigmas[i]
        h, hh, phi_1 = _coefficients(sigma_s0, sigma_t)
        b_h = phi_1
        m0 = self.history[-1]
        alpha_t = 1 - sigma_t
        corrected = (sigma_t / sigma_s0) * self.last_sample - (alpha_t * phi_1) * m0
        if self.last_order == 1:
            return corrected - (alpha_t * b_h * 0.5) * (x0 - m0)
        r = (_lambda(self.sigmas[i - 2]) - _lambda(sigma_s0)) / h
        b1 = (phi_1 / hh - 1) / b_h
        b2 = 2 * ((phi_1 / hh - 1) / hh - 0.5) / b_h
        # Solve [[1, 1], [r, 1]]·ρ = [b1, b2].
        rho_0 = (b1 - b2) / (1 - r)
        rho_1 = b1 - rho_0
        difference = (self.history[-2] - m0) / r
        return corrected - (alpha_t * b_h) * (rho_0 * difference + rho_1 * (x0 - m0))
