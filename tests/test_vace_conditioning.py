"""VACE conditioning equals diffusers' ``WanVACEPipeline`` (prepare_video_latents + prepare_masks) on tiny inputs,
with the same tiny diffusers VAE as the encoder on both sides; sizes and frame counts are validated."""

import pytest
import torch

from wan_express.errors import InvalidInputError
from wan_express.sampling.vace import fit_reference, mask_channels, vace_conditioning

FRAMES, HEIGHT, WIDTH = 5, 32, 48


@pytest.fixture(scope="module")
def pipeline():
    from diffusers import AutoencoderKLWan, WanVACEPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=None, transformer=None)
    return pipe


def encoder_of(pipe):
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(16, 1, 1, 1)

    def encode(video):
        with torch.no_grad():
            return (vae.encode(video[None]).latent_dist.mode()[0] - mean) / std
    return encode


def diffusers_context(pipe, video, mask, references):
    class _Patch:  # prepare_masks reads the transformer's patch size only
        class config:
            patch_size = (1, 2, 2)
    pipe.transformer = _Patch()
    with torch.no_grad():
        latents = pipe.prepare_video_latents(video[None], mask[None, None].expand(1, 3, -1, -1, -1).contiguous(),
                                             [references], device=torch.device("cpu"))
        masks = pipe.prepare_masks(mask[None, None], [references])
    return torch.cat([latents, masks], dim=1)


def rel_max(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("with_reference", [False, True])
def test_context_matches_diffusers(pipeline, with_reference):
    generator = torch.Generator().manual_seed(1)
    video = torch.rand(3, FRAMES, HEIGHT, WIDTH, generator=generator) * 2 - 1
    mask = torch.zeros(FRAMES, HEIGHT, WIDTH)
    mask[:, 8:24, 16:40] = 1.0  # inpaint a box
    mask[2:, :, :8] = 0.7       # > 0.5 binarises to 1 for the split, stays 0.7 in the mask channels
    references = [torch.rand(3, HEIGHT, WIDTH, generator=generator) * 2 - 1] if with_reference else []
    ours = vace_conditioning(encoder_of(pipeline), FRAMES, HEIGHT, WIDTH, frames=video, mask=mask,
                             reference_images=references, strength=0.7)
    expected = diffusers_context(pipeline, video, mask, references)
    assert ours.context.shape == expected.shape == (1, 96, len(references) + 2, HEIGHT // 8, WIDTH // 8)
    assert rel_max(ours.context, expected) <= 1e-5
    assert ours.trim == len(references) and ours.strength == 0.7
    assert ours.latent_shape == (16, len(references) + 2, HEIGHT // 8, WIDTH // 8)


def test_mask_packing_puts_each_8x8_pixel_in_its_channel():
    mask = torch.zeros(1, 16, 16)
    mask[0, 8 + 3, 5] = 1.0  # latent pixel (1, 0), offset (dy 3, dx 5)
    packed = mask_channels(mask, references=2)
    assert packed.shape == (64, 3, 2, 2)
    assert packed[:, :2].abs().sum() == 0
    assert packed[8 * 3 + 5, 2, 1, 0] == 1 and packed.sum() == 1


def test_reference_images_are_fitted_on_white():
    image = -torch.ones(3, 16, 16)
    fitted = fit_reference(image, 16, 32)
    assert fitted.shape == (3, 16, 32)
    assert (fitted[:, :, 8:24] == -1).all() and (fitted[:, :, :8] == 1).all() and (fitted[:, :, 24:] == 1).all()


@pytest.mark.parametrize("frames,height,width,match", [(4, 32, 48, "4k\\+1"), (5, 30, 48, "multiples of 16")])
def test_sizes_are_validated(frames, height, width, match):
    with pytest.raises(InvalidInputError, match=match):
        vace_conditioning(lambda v: v, frames, height, width)


def test_control_video_and_mask_shapes_are_validated():
    with pytest.raises(InvalidInputError, match="control video"):
        vace_conditioning(lambda v: v, 5, 32, 48, frames=torch.zeros(3, 9, 32, 48))
    with pytest.raises(InvalidInputError, match="VACE mask"):
        vace_conditioning(lambda v: v, 5, 32, 48, mask=torch.zeros(5, 16, 48))
