"""The Wan latent spaces: which VAE, stride and statistics go with a latent of C channels.

Every part of the pack that needs to know what a 16- or 48-channel latent is asks this registry: the VAE loader
(which network class a file is and which latent width it must have), the samplers (latent size of a text-only
video), the nodes (conversions to ComfyUI's raw LATENT and its latent format for previews) and the demo.

ComfyUI's Wan LATENT carries the un-normalised VAE mean ``mu``; the DiT and the official pipelines use
``z = (mu - mean) / std`` per channel, with the statistics of the VAE that made the latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from .vae2_1 import WAN21_MEAN, WAN21_STD, WAN21_VAE, WanVAE, WanVAE21
from .vae2_2 import WAN22_MEAN, WAN22_STD, WAN22_VAE, WanVAE22


@dataclass(frozen=True)
class LatentSpace:
    """One Wan latent space.

    Attributes:
        name: what users call it ("Wan2.1", "Wan2.2").
        vae_version: `VaeConfig.version` of the VAE that encodes into it.
        channels: latent channels ``C`` of ``[B, C, T, H, W]``.
        vae_class: the network that encodes and decodes it.
        stride: (time, height, width) compression of the VAE; time counts after the first frame.
        mean, std: per-channel statistics, ``z = (mu - mean) / std``.
        comfy_format: class name in ``comfy.latent_formats`` (ComfyUI's previews and LATENT convention).
    """

    name: str
    vae_version: str
    channels: int
    vae_class: type[WanVAE]
    stride: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    comfy_format: str

    def statistics(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as fp32 [1, C, 1, 1, 1] on ``device``."""
        return tuple(torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
                     for values in (self.mean, self.std))


WAN21_LATENT = LatentSpace("Wan2.1", WAN21_VAE.version, WAN21_VAE.z_dim, WanVAE21, WanVAE21.stride, WAN21_MEAN,
                           WAN21_STD, "Wan21")
WAN22_LATENT = LatentSpace("Wan2.2", WAN22_VAE.version, WAN22_VAE.z_dim, WanVAE22, WanVAE22.stride, WAN22_MEAN,
                           WAN22_STD, "Wan22")
LATENT_SPACES = (WAN21_LATENT, WAN22_LATENT)


def _expected() -> str:
    return " or ".join(f"{space.channels} ({space.name} VAE)" for space in LATENT_SPACES)


def latent_space(channels: int) -> LatentSpace:
    """The latent space with ``channels`` channels; other widths raise `InvalidInputError`."""
    for space in LATENT_SPACES:
        if space.channels == channels:
            return space
    raise InvalidInputError(f"{channels}-channel latents are not a Wan latent space; expected {_expected()} channels")


def latent_space_of_vae(version: str) -> LatentSpace:
    """The latent space of the Wan VAE with `VaeConfig.version` ``version``."""
    for space in LATENT_SPACES:
        if space.vae_version == version:
            return space
    raise InvalidInputError(f"no Wan VAE version {version!r}; expected "
                            f"{' or '.join(repr(space.vae_version) for space in LATENT_SPACES)}")


def _space_of(latent: torch.Tensor) -> LatentSpace:
    if latent.dim() != 5 or all(space.channels != latent.shape[1] for space in LATENT_SPACES):
        raise InvalidInputError(f"latent has shape {tuple(latent.shape)}; expected [B, "
                                f"{' or '.join(str(space.channels) for space in LATENT_SPACES)}, T, H, W]")
    return latent_space(latent.shape[1])


def to_raw(latent: torch.Tensor) -> torch.Tensor:
    """Normalised [B, C, T, H, W] -> raw VAE space fp32 (ComfyUI LATENT ``samples``)."""
    mean, std = _space_of(latent).statistics(latent.device)
    return latent.float() * std + mean


def to_normalized(raw: torch.Tensor) -> torch.Tensor:
    """Raw VAE-space [B, C, T, H, W] (ComfyUI LATENT ``samples``) -> normalised fp32."""
    mean, std = _space_of(raw).statistics(raw.device)
    return (raw.float() - mean) / std
