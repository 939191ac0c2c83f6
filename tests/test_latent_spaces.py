"""The latent-space registry: one entry per Wan VAE, looked up by channels or VAE version."""

import pytest
import torch

from wan_express.errors import InvalidInputError
from wan_express.models import WAN21_VAE, WAN22_VAE, WanVAE21, WanVAE22
from wan_express.models.latent_spaces import (LATENT_SPACES, WAN21_LATENT, WAN22_LATENT, latent_space,
                                              latent_space_of_vae)


def test_each_space_matches_its_vae():
    for space, vae_class, config in ((WAN21_LATENT, WanVAE21, WAN21_VAE), (WAN22_LATENT, WanVAE22, WAN22_VAE)):
        assert space.vae_class is vae_class and space.stride == vae_class.stride
        assert space.channels == config.z_dim == len(space.mean) == len(space.std)
        assert (space.mean, space.std) == (vae_class.latent_mean, vae_class.latent_std)
        assert latent_space(space.channels) is space and latent_space_of_vae(config.version) is space
    assert [(s.channels, s.stride, s.comfy_format) for s in LATENT_SPACES] == [(16, (4, 8, 8), "Wan21"),
                                                                               (48, (4, 16, 16), "Wan22")]


def test_statistics_are_fp32_per_channel():
    mean, std = WAN22_LATENT.statistics()
    assert mean.shape == std.shape == (1, 48, 1, 1, 1) and mean.dtype == torch.float32
    assert mean[0, 0].item() == pytest.approx(-0.2289) and std[0, 0].item() == pytest.approx(0.4765)


def test_unknown_latents_are_refused_by_name():
    with pytest.raises(InvalidInputError, match=r"32-channel latents .* 16 \(Wan2.1 VAE\) or 48 \(Wan2.2 VAE\)"):
        latent_space(32)
    with pytest.raises(InvalidInputError, match="'2.1' or '2.2'"):
        latent_space_of_vae("3.0")
