"""The sampling loop: noise -> (expert, guidance, solver step) per schedule step -> clean latent.

Entry point: `sample(models, conditioning, *, schedule, seed, ...) -> latent [1, C, T, H, W]`. Schedules are
`DistillSchedule` (LightX2V 4-step), `FlowUniPC` (official default) and `FlowEuler`; conditionings come from
`sampling.conditioning`. The loop checks for an interrupt before every model call and before every DiT block (a
forward pre-hook on ``blocks``, removed after the run), and stops with an error naming the step as soon as the latent
holds NaN or Inf (`numerics.check_latent`). A failure clears the run's tensors and empties the GPU cache; a CUDA
out-of-memory becomes `OutOfGpuMemoryError` naming the remedies (`failures.guarded`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import InvalidInputError, SamplingInterrupted
from ..expert_names import EXPERTS
from .conditioning import Conditioning
from .experts import ExpertHook, Experts
from .failures import guarded
from .noise import initial_noise
from ..numerics import check_latent
from .schedules import Schedule

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, torch.Tensor], None]
"""``progress(step, total, x0_preview)`` after every step; step counts from 1, preview is [1, C, T, H, W] fp32."""

InterruptCheck = Callable[[], bool]
"""Asked before every model call; returning True stops the run (raising inside it stops it too)."""


def _check_interrupt(interrupt: InterruptCheck | None, step: int, total: int) -> None:
    if interrupt is not None and interrupt():
        raise SamplingInterrupted(f"sampling interrupted before the model call of step {step}/{total}")


@contextlib.contextmanager
def _block_checks(models: Sequence[nn.Module], interrupt: InterruptCheck | None) -> Iterator[None]:
    """Ask ``interrupt`` before every DiT block of ``models`` (those with a ``blocks`` list) while the run lasts."""
    handles, module_index = [], {}

    def before_block(module, args) -> None:
        if interrupt():
            raise SamplingInterrupted(f"sampling interrupted before DiT block {module_index[id(module)]}")

    if interrupt is not None:
        for model in models:
            for index, block in enumerate(getattr(model, "blocks", None) or ()):
                module_index[id(block)] = index
                # first, so a streamed block is not copied in for a run that stops before it
                handles.append(block.register_forward_pre_hook(before_block, prepend=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _velocity(model: nn.Module, latent: torch.Tensor, timestep: torch.Tensor, conditioning: Conditioning,
              guidance: float, check: Callable[[], None]) -> torch.Tensor:
    """Model velocity [1, C, T, H, W] fp32, with CFG `v_u + g·(v_c − v_u)` when guidance ≠ 1 (image
    conditioning in both branches, only the text differs)."""
    extra = dict(clip_fea=conditioning.clip_fea, y=conditioning.y)
    if conditioning.vace_context is not None:
        extra.update(vace_context=conditioning.vace_context, vace_strength=conditioning.vace_strength)
    check()
    velocity = model(latent, timestep, conditioning.context, **extra).float()
    if guidance == 1.0:
        return velocity
    check()
    unconditional = model(latent, timestep, conditioning.negative_context, **extra).float()
    return unconditional + guidance * (velocity - unconditional)


def _on_device(conditioning: Conditioning, device: torch.device) -> Conditioning:
    moved = {field: getattr(conditioning, field) for field in ("context", "negative_context", "y", "clip_fea",
                                                                "first_latent", "vace_context")}
    moved = {field: None if tensor is None else tensor.to(device) for field, tensor in moved.items()}
    return Conditioning(latent_shape=conditioning.latent_shape, vace_strength=conditioning.vace_strength, **moved)


def sample(models: nn.Module | Sequence[nn.Module], conditioning: Conditioning, *, schedule: Schedule, seed: int,
           noise_source: str = "cpu", device: torch.device | str | None = None,
           progress: ProgressCallback | None = None, interrupt: InterruptCheck | None = None,
           expert_hook: ExpertHook | None = None, init_latent: torch.Tensor | None = None,
           start_step: int = 0) -> torch.Tensor:
    """Generate a clean latent (or re-generate one: ``init_latent`` with ``start_step``).

    Args:
        models: one `WanDiT`, or a Wan2.2 A14B pair (high-noise expert, low-noise expert).
        conditioning: from `text_to_video`, `image_to_video`, `first_last_to_video` or `ti2v_image_to_video`.
        schedule: `DistillSchedule`, `FlowUniPC` or `FlowEuler`.
        seed: noise seed.
        noise_source: "cpu" (same noise on every machine) or "lightx2v": LightX2V parity, i.e. its CUDA generator
            draw and bf16 latents between steps whatever the schedule's ``latent_dtype``.
        device: where the latent lives; default: the device of the first model.
        progress: called after each step with (step, total, x0 preview).
        interrupt: asked before each model call; True stops with `SamplingInterrupted`.
        expert_hook: two-expert runs: ``hook(active, idle)`` when the expert changes (e.g. to offload the idle one).
        init_latent: [1, C, T, H, W] normalised latent to start from (video-to-video, extension); it is noised to
            the schedule's noise level at ``start_step`` (flow matching: ``(1 − σ)·x + σ·noise``).
        start_step: the first schedule step to run (0 runs them all); steps before it are skipped, experts and
            guidance stay those of the full schedule.

    Returns:
        [1, C, T, H, W] float32 normalised latent, ready for the VAE decoder.

    Raises:
        SamplingInterrupted: ``interrupt`` returned True (its own exception, e.g. the host's, goes on as it is).
        NonFiniteLatentError: the latent held NaN/Inf after a step.
        OutOfGpuMemoryError: CUDA ran out of memory (the message names the remedies).
    """
    models = (models,) if isinstance(models, nn.Module) else tuple(models)
    with _block_checks(models, interrupt):
        return guarded("sampling", _sample, models, conditioning, schedule=schedule, seed=seed,
                       noise_source=noise_source, device=device, progress=progress, interrupt=interrupt,
                       expert_hook=expert_hook, init_latent=init_latent, start_step=start_step)


def _sample(models, conditioning, *, schedule, seed, noise_source, device, progress, interrupt, expert_hook,
            init_latent, start_step) -> torch.Tensor:
    experts = Experts(models, expert_hook)
    plan = experts.plan(schedule, conditioning.default_boundary)
    if not 0 <= start_step < len(plan):
        raise InvalidInputError(f"start_step {start_step} is outside the schedule's {len(plan)} steps")
    if init_latent is not None and tuple(init_latent.shape[1:]) != tuple(conditioning.latent_shape):
        raise InvalidInputError(f"the input latent has shape {tuple(init_latent.shape)}; this conditioning makes "
                                f"latents of shape [1, {', '.join(map(str, conditioning.latent_shape))}] (set the "
                                "width, height and length of the input video)")
    first = experts.activate(plan[start_step])  # the hook runs first, so an offloaded first expert is in place
    device = torch.device(device) if device is not None else next(first.parameters()).device
    # LightX2V parity: its latents live in bf16 between steps (and so does y, concatenated to them)
    latent_dtype = torch.bfloat16 if noise_source == "lightx2v" else schedule.latent_dtype
    total = len(plan) - start_step
    guidance = [schedule.guidance(expert) for expert in plan]
    if any(g != 1.0 for g in guidance) and conditioning.negative_context is None:
        raise InvalidInputError("guidance is on (cfg != 1) but no negative context was given; encode the negative "
                                "prompt (sampling.prompts.negative_prompt gives the official default) or set cfg 1")
    sigmas = schedule.sigmas().tolist()
    timesteps = schedule.timesteps().to(device)
    solver = schedule.solver()
    solver.start_at(start_step)
    conditioning = _on_device(conditioning, device)
    log.info("sampling %d steps with %s (cfg %s), latent %s, %s, seed %d", total, type(schedule).__name__,
             sorted(set(guidance)), conditioning.latent_shape,
             _experts_line(plan[start_step:]) if experts.pair else "one model", seed)

    noise = initial_noise(conditioning.latent_shape, seed, noise_source, device)
    if init_latent is not None:
        sigma = sigmas[start_step]
        noise = (1 - sigma) * init_latent.to(device, torch.float32) + sigma * noise
    latent = conditioning.reimpose(noise).to(latent_dtype)
    with torch.no_grad():
        for step in range(start_step, len(plan)):
            expert = plan[step]
            done = step - start_step + 1
            model = experts.activate(expert, step)  # step: the next expert's look-ahead prefetch
            timestep = conditioning.token_timesteps(timesteps[step:step + 1])
            velocity = _velocity(model, latent, timestep, conditioning, guidance[step],
                                 lambda: _check_interrupt(interrupt, done, total))
            if progress is not None:
                preview = conditioning.reimpose(latent.float() - sigmas[step] * velocity)  # x0 estimate
            latent = conditioning.reimpose(solver.step(latent, velocity)).to(latent_dtype)
            check_latent(latent, done, total, sigmas[step],
                         ", low-noise expert" if expert else ", high-noise expert" if experts.pair else "")
            if progress is not None:
                progress(done, total, preview)
    return latent.float()


def _experts_line(plan: list[int]) -> str:
    """Which expert runs which steps, e.g. ``experts high steps 1-2, low steps 3-4``."""
    runs: list[tuple[int, int, int]] = []
    for index, expert in enumerate(plan, start=1):
        if runs and runs[-1][0] == expert:
            runs[-1] = (expert, runs[-1][1], index)
        else:
            runs.append((expert, index, index))
    return "experts " + ", ".join(f"{EXPERTS[expert]} step{'s' if last > first else ''} "
                                  f"{first}{f'-{last}' if last > first else ''}" for expert, first, last in runs)
