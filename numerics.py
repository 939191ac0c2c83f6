"""Finiteness checks: one ``torch.isfinite(x).all()`` per sampler step and per VAE output, raising a pack error
that names where the NaN/Inf appeared and its likely causes."""

from __future__ import annotations

import torch

from .errors import NonFiniteLatentError, NonFiniteOutputError

LIKELY_CAUSES = ("fp16 overflow (load the model in bf16, or fp8/int8 with fresh scales), a broken LoRA or one at "
                 "too high a strength, or a cfg / shift far above the model's usual values")


def check_latent(latent: torch.Tensor, step: int, total: int, sigma: float, where: str = "") -> None:
    """Raise `NonFiniteLatentError` when the latent [1, C, T, H, W] after step ``step``/``total`` (noise level
    ``sigma``) holds NaN or Inf; ``where`` adds the expert, e.g. ``", low-noise expert"``."""
    if not bool(torch.isfinite(latent).all()):
        raise NonFiniteLatentError(f"the latent became NaN/Inf at step {step}/{total} (sigma {sigma:.4g}{where}); "
                                   f"likely causes: {LIKELY_CAUSES}")


def check_pixels(video: torch.Tensor, what: str = "VAE decode") -> torch.Tensor:
    """``video`` (any shape) unchanged when finite, else `NonFiniteOutputError` naming ``what``."""
    if not bool(torch.isfinite(video).all()):
        raise NonFiniteOutputError(f"the {what} produced NaN/Inf pixels; the latent or the VAE weights are broken "
                                   "(a VAE run in fp16 can overflow: use bf16 or fp32), or the sampler's latent "
                                   f"was already bad ({LIKELY_CAUSES})")
    return video
