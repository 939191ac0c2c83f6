"""Conditioning: I2V/FLF2V mask and y against the official formulas (written out below from the official pipelines),
TI2V per-token timesteps and first-frame replacement, latent sizes, the 1 + 4k frame rule, negative prompts.

The VAE is the tiny random Wan2.1 VAE of the pack (official architecture, narrow widths).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wan_express.errors import InvalidInputError
from wan_express.models.vae2_1 import VaeConfig, WanVAE21
from wan_express.sampling import (DEFAULT_NEGATIVE_PROMPT, BOUNDARY_I2V, BOUNDARY_T2V, first_last_to_video,
                                  i2v_latent_size, image_to_video, latent_frames, negative_prompt, text_to_video,
                                  ti2v_image_to_video, ti2v_output_size)
from wan_express.sampling.conditioning import frame_mask, ti2v_preprocess, token_timesteps
from wan_express.synthetic import random_weights_

TEXT_DIM = 64


@pytest.fixture(scope="module")
def vae():
    model = WanVAE21(VaeConfig("2.1", dim=8, dec_dim=8, z_dim=16))
    random_weights_(model, 0)
    return model.eval()


def random_image(height, width, seed=0):
    """An 8-bit picture as the pack receives it: [3, H, W] in [-1, 1]."""
    pixels = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed))
    return (pixels.float() / 255 - 0.5) / 0.5


def context(seed=0):
    return torch.randn(1, 7, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def official_mask(frames, lat_h, lat_w, keep_last):
    """The official mask: ones for the kept pixel frames, frame 0 repeated 4 times, folded into 4 channels."""
    msk = torch.ones(1, frames, lat_h, lat_w)
    if keep_last:
        msk[:, 1:-1] = 0
    else:
        msk[:, 1:] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w)
    return msk.transpose(1, 2)[0]


def official_lat_size(image, max_area):
    h, w = image.shape[1:]
    aspect_ratio = h / w
    lat_h = round(np.sqrt(max_area * aspect_ratio) // 8 // 2 * 2)
    lat_w = round(np.sqrt(max_area / aspect_ratio) // 8 // 2 * 2)
    return lat_h, lat_w


def test_i2v_y_equals_the_official_construction(vae):
    image, frames, max_area = random_image(40, 56), 5, 48 * 64
    cond = image_to_video(vae, image, context(), frames=frames, max_area=max_area)
    lat_h, lat_w = official_lat_size(image, max_area)
    h, w = 8 * lat_h, 8 * lat_w
    video = torch.concat([F.interpolate(image[None].cpu(), size=(h, w), mode="bicubic").transpose(0, 1),
                          torch.zeros(3, frames - 1, h, w)], dim=1)
    expected = torch.concat([official_mask(frames, lat_h, lat_w, keep_last=False), vae.encode(video[None])[0]])
    assert cond.y.shape == (1, 20, 2, lat_h, lat_w)
    assert torch.equal(cond.y[0], expected)
    assert cond.latent_shape == (16, 2, lat_h, lat_w)
    assert cond.clip_fea is None and cond.default_boundary == BOUNDARY_I2V
    # all four mask channels are 1 at latent frame 0 and 0 elsewhere (spec §6.2)
    assert cond.y[0, :4, 0].eq(1).all() and cond.y[0, :4, 1:].eq(0).all()


def test_flf2v_mask_and_y_equal_the_official_construction(vae):
    first, last = random_image(40, 56, seed=1), random_image(40, 56, seed=2)
    frames, max_area = 5, 48 * 64
    clip = torch.randn(1, 514, 1280)
    cond = first_last_to_video(vae, first, last, context(), frames=frames, max_area=max_area, clip_fea=clip)
    lat_h, lat_w = official_lat_size(first, max_area)
    h, w = 8 * lat_h, 8 * lat_w
    video = torch.concat([F.interpolate(first[None], size=(h, w), mode="bicubic").transpose(0, 1),
                          torch.zeros(3, frames - 2, h, w),
                          F.interpolate(last[None], size=(h, w), mode="bicubic").transpose(0, 1)], dim=1)
    expected = torch.concat([official_mask(frames, lat_h, lat_w, keep_last=True), vae.encode(video[None])[0]])
    assert torch.equal(cond.y[0], expected)
    assert cond.clip_fea is clip


def test_flf2v_mask_at_81_frames_marks_frame_0_and_channel_3_of_frame_20():
    mask = frame_mask(81, 2, 2, last_frame=True)
    assert torch.equal(mask, official_mask(81, 2, 2, keep_last=True))
    assert mask[:, 0].eq(1).all() and mask[:3, 20].eq(0).all() and mask[3, 20].eq(1).all()
    assert mask[:, 1:20].eq(0).all()


@pytest.mark.parametrize("image_hw,area,expected", [   # spec sampling.md §6.1 table
    ((480, 832), 480 * 832, (58, 104)), ((832, 480), 480 * 832, (104, 60)), ((1024, 1024), 480 * 832, (78, 78)),
    ((1080, 1920), 480 * 832, (58, 104)), ((768, 1024), 480 * 832, (68, 90)), ((480, 832), 720 * 1280, (90, 156)),
    ((1080, 1920), 720 * 1280, (90, 160)), ((768, 1024), 720 * 1280, (102, 138)),
])
def test_i2v_latent_size_reproduces_the_official_table(image_hw, area, expected):
    assert i2v_latent_size(*image_hw, area) == expected


@pytest.mark.parametrize("size,expected", [  # worked by hand from the official best_output_size
    ((1280, 720), (1248, 704)),   # width first: 1248x704 (aspect 1.773) beats 1280x704 (1.818) for 16:9
    ((720, 1280), (704, 1248)), ((1280, 704), (1280, 704)), ((1024, 1024), (960, 928)),
])
def test_ti2v_output_size_picks_multiples_of_32_within_the_area(size, expected):
    assert ti2v_output_size(*size, 704 * 1280) == expected


def test_ti2v_image_replaces_frame_0_with_the_lanczos_prepared_image(vae):
    from PIL import Image

    image = random_image(50, 70, seed=3)
    cond = ti2v_image_to_video(vae, image, context(), frames=9, max_area=32 * 48)
    width, height = ti2v_output_size(70, 50, 32 * 48, multiple=16)
    # official: PIL LANCZOS resize to cover, centre crop, to_tensor, (x - 0.5) / 0.5
    picture = Image.fromarray(((image + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    scale = max(width / 70, height / 50)
    picture = picture.resize((round(70 * scale), round(50 * scale)), Image.LANCZOS)
    left, top = (picture.width - width) // 2, (picture.height - height) // 2
    picture = picture.crop((left, top, left + width, top + height))
    expected = (torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert torch.equal(ti2v_preprocess(image, width, height), expected)
    assert torch.equal(cond.first_latent, vae.encode(expected[None, :, None]))
    assert cond.latent_shape == (16, 3, height // 8, width // 8) and cond.y is None
    noise = torch.randn(1, *cond.latent_shape)
    blended = cond.reimpose(noise)
    # the official blend (1 - mask2)·z + mask2·x with mask2 = 0 on latent frame 0
    mask2 = torch.ones(cond.latent_shape)
    mask2[:, 0] = 0
    assert torch.equal(blended[0], (1.0 - mask2) * cond.first_latent[0] + mask2 * noise[0])


@pytest.mark.parametrize("t", [torch.tensor([937], dtype=torch.int64), torch.tensor([833.3333], dtype=torch.float32)])
def test_ti2v_per_token_timesteps_equal_the_official_formula(t):
    shape = (48, 3, 4, 6)
    mask2 = torch.ones(shape)
    mask2[:, 0] = 0
    seq_len = 3 * 2 * 3
    expected = (mask2[0][:, ::2, ::2] * t).flatten()
    expected = torch.cat([expected, expected.new_ones(seq_len - expected.size(0)) * t]).unsqueeze(0)
    got = token_timesteps(t, shape)
    assert got.shape == (1, seq_len) and got.dtype == torch.float32
    assert torch.equal(got, expected)
    assert got[0, :6].eq(0).all() and got[0, 6:].eq(t.float()).all()


def test_text_only_conditioning_shapes_and_checks():
    cond = text_to_video(context(), width=832, height=480, frames=81)
    assert cond.latent_shape == (16, 21, 60, 104) and cond.default_boundary == BOUNDARY_T2V
    assert text_to_video(context(), width=1280, height=704, frames=121, z_dim=48,
                         stride=(4, 16, 16)).latent_shape == (48, 31, 44, 80)
    with pytest.raises(InvalidInputError, match="multiple of 16"):
        text_to_video(context(), width=840, height=480, frames=81)


@pytest.mark.parametrize("frames", [80, 0, 82, 2])
def test_frame_counts_other_than_1_plus_4k_are_refused_with_a_suggestion(frames, vae):
    with pytest.raises(InvalidInputError, match="1 \\+ 4k"):
        latent_frames(frames)
    with pytest.raises(InvalidInputError, match="1 \\+ 4k"):
        image_to_video(vae, random_image(16, 16), context(), frames=frames, max_area=256)
    assert latent_frames(81) == 21 and latent_frames(1) == 1


def test_negative_prompt_defaults():
    assert negative_prompt("", "wan2.2-t2v") == DEFAULT_NEGATIVE_PROMPT
    assert negative_prompt("  ") == DEFAULT_NEGATIVE_PROMPT
    assert negative_prompt("", "wan2.1-i2v") == "镜头晃动，" + DEFAULT_NEGATIVE_PROMPT
    assert negative_prompt("", "wan2.1-flf2v") == "镜头切换，镜头晃动，" + DEFAULT_NEGATIVE_PROMPT
    assert negative_prompt("blurry", "wan2.1-i2v") == "blurry"
    assert DEFAULT_NEGATIVE_PROMPT.startswith("色调艳丽，过曝") and DEFAULT_NEGATIVE_PROMPT.endswith("倒着走")
