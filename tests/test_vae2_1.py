"""The Wan2.1 VAE matches the official ``vae2_1.WanVAE_`` on tiny random models, chunk by chunk.

Parity tolerance (spec networks.md §4.4): max |ours - official| <= 1e-5 * max |official| in fp32, on 9 frames
(3 encoder chunks) and 3 latents (3 decoder chunks). Tiled decoding is approximate at tile seams; its bound
below is measured on random weights (the worst case: real decoders are smoother) and guards regressions.
"""

import pytest
import torch

from wan_express.errors import InvalidInputError
from wan_express.loaders.vae import build_vae
from wan_express.models.vae2_1 import WAN21_MEAN, WAN21_STD, WAN21_VAE, WanVAE21
from wan_express.synthetic import random_weights_

from .official_reference import official_module

REL_TOL = 1e-5
TINY_DIM = 8
# Tiles of 12 latents overlapping by 4 vs one whole decode, random weights: measured rmse/std 0.14, mean |diff|
# 0.004 (output std 0.04). Random decoders mix the whole frame through attention, so seams are far worse than
# with trained weights; the bound guards regressions, it is not a quality figure.
TILED_RMSE_OVER_STD = 0.25
TILED_MEAN_ABS = 0.008


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def official_tiny(seed: int = 0) -> torch.nn.Module:
    """The official Wan2.1 VAE at base width 8, random weights; the decoder head is scaled so that its output
    stays inside [-1, 1] and the final clamp hides nothing."""
    reference = official_module("vae2_1").WanVAE_(dim=TINY_DIM, z_dim=16, temperal_downsample=[False, True, True])
    random_weights_(reference, seed)
    with torch.no_grad():
        reference.decoder.head[2].weight.mul_(0.1)
        reference.decoder.head[2].bias.mul_(0.1)
    return reference.eval()


def official_scale(mean=WAN21_MEAN, std=WAN21_STD):
    """The official wrapper's ``scale`` argument: [mean, 1/std]."""
    return [torch.tensor(mean), 1.0 / torch.tensor(std)]


@pytest.fixture(scope="module")
def pair():
    reference = official_tiny()
    return reference, build_vae(reference.state_dict())


def clip(frames: int, seed: int = 1, batch: int = 2, height: int = 32, width: int = 40) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=generator) * 2 - 1


def test_encode_matches_official_over_three_chunks(pair):
    reference, ours = pair
    video = clip(9)
    with torch.no_grad():
        expected = reference.encode(video, official_scale())
    got = ours.encode(video)
    assert got.shape == (2, 16, 3, 4, 5) and got.dtype == torch.float32
    assert relative_error(got, expected) <= REL_TOL


def test_decode_matches_official_over_three_chunks(pair):
    reference, ours = pair
    latent = torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference.decode(latent, official_scale())
    assert expected.abs().max() < 1  # the clamp is inactive: the whole signal is compared
    got = ours.decode(latent)
    assert got.shape == (2, 3, 9, 32, 40)
    assert relative_error(got, expected) <= REL_TOL


def test_comfy_latent_format_is_raw_vae_space(pair):
    reference, _ = pair
    raw = build_vae(reference.state_dict(), latent_format="comfy")
    video = clip(5)
    with torch.no_grad():
        expected = reference.encode(video, [0.0, 1.0])
        latent = raw.encode(video)
        assert relative_error(latent, expected) <= REL_TOL
        expected_video = reference.decode(latent, [0.0, 1.0])
    assert relative_error(raw.decode(latent), expected_video) <= REL_TOL


def test_frame_counts_follow_one_plus_four_k(pair):
    _, ours = pair
    for frames, latents in ((1, 1), (5, 2), (9, 3)):
        assert ours.encode(clip(frames, batch=1, height=16, width=16)).shape[2] == latents
    assert ours.decode(torch.randn(1, 16, 3, 2, 2)).shape[2] == 9
    assert ours.decode(torch.randn(1, 16, 1, 2, 2)).shape[2] == 1


@pytest.mark.parametrize("frames,nearest", [(7, "5 or 9"), (2, "1 or 5"), (80, "77 or 81")])
def test_other_frame_counts_are_rejected_with_the_nearest_valid_ones(pair, frames, nearest):
    _, ours = pair
    with pytest.raises(InvalidInputError, match=rf"got {frames} frames.*{nearest}"):
        ours.encode(torch.zeros(1, 3, frames, 16, 16))


def test_bad_sizes_and_latent_shapes_are_rejected(pair):
    _, ours = pair
    with pytest.raises(InvalidInputError, match="divisible by 8"):
        ours.encode(torch.zeros(1, 3, 5, 20, 16))
    with pytest.raises(InvalidInputError, match=r"\[B, 16, n>=1"):
        ours.decode(torch.zeros(1, 48, 2, 4, 4))
    with pytest.raises(InvalidInputError, match="overlap"):
        ours.decode(torch.zeros(1, 16, 1, 4, 4), tiled=True, tile=4, overlap=4)


def test_encoding_is_causal(pair):
    _, ours = pair
    video = clip(9, batch=1)
    changed = video.clone()
    changed[:, :, 5:] = -changed[:, :, 5:]
    first, second = ours.encode(video), ours.encode(changed)
    assert torch.equal(first[:, :, :2], second[:, :, :2])
    assert not torch.equal(first[:, :, 2], second[:, :, 2])


def test_released_widths_give_the_official_key_and_parameter_counts():
    with torch.device("meta"):
        model = WanVAE21(WAN21_VAE)
    assert len(model.state_dict()) == 194
    assert sum(p.numel() for p in model.parameters()) == 126_892_531


def test_tiled_decode_stays_within_the_stated_tolerance_of_a_whole_decode(pair):
    _, ours = pair
    latent = torch.randn(1, 16, 1, 16, 24, generator=torch.Generator().manual_seed(3))
    whole = ours.decode(latent, tiled=False)
    tiled = ours.decode(latent, tiled=True, tile=12, overlap=4)  # 2 x 3 tiles
    difference = tiled - whole
    assert tiled.shape == whole.shape == (1, 3, 1, 128, 192)
    assert difference.pow(2).mean().sqrt() <= TILED_RMSE_OVER_STD * whole.std()
    assert difference.abs().mean() <= TILED_MEAN_ABS
    # a tile as large as the latent is the whole decode, bit for bit
    assert torch.equal(ours.decode(latent, tiled=True, tile=(16, 24), overlap=0), whole)


def test_frames_above_480p_are_tiled_by_default(pair):
    _, ours = pair
    assert not ours.tiles_by_default((1, 16, 21, 60, 104))  # 480 x 832
    assert ours.tiles_by_default((1, 16, 21, 61, 104))
    assert ours.tiles_by_default((1, 16, 21, 90, 160))  # 720p
    latent = torch.randn(1, 16, 2, 4, 6)
    assert torch.equal(ours.decode(latent), ours.decode(latent, tiled=False))
