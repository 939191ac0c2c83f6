"""Conversions between the normalised latents the Wan DiT works in and ComfyUI's raw VAE-space LATENT.

ComfyUI's Wan LATENT carries the un-normalised VAE mean ``mu``; the DiT and the official pipelines use
``z = (mu - mean) / std`` per channel. The statistics are the VAE's: 16 channels for Wan2.1, 48 for Wan2.2.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from ..models.vae2_1 import WanVAE21
from ..models.vae2_2 import WanVAE22

_STATISTICS = {len(vae.latent_mean): (vae.latent_mean, vae.latent_std) for vae in (WanVAE21, WanVAE22)}


def _statistics(latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    channels = latent.shape[1]
    if latent.dim() != 5 or channels not in _STATISTICS:
        raise InvalidInputError(f"latent has shape {tuple(latent.shape)}; expected [B, 16 or 48, T, H, W]")
    mean, std = (torch.tensor(values, dtype=torch.float32, device=latent.device).view(1, -1, 1, 1, 1)
                 for values in _STATISTICS[channels])
    return mean, std


def to_raw(latent: torch.Tensor) -> torch.Tensor:
    """Normalised [B, C, T, H, W] -> raw VAE space (ComfyUI LATENT ``samples``)."""
    mean, std = _statistics(latent)
    return latent.float() * std + mean


def to_normalized(raw: torch.Tensor) -> torch.Tensor:
    """Raw VAE-space [B, C, T, H, W] (ComfyUI LATENT ``samples``) -> normalised."""
    mean, std = _statistics(raw)
    return (raw.float() - mean) / std
