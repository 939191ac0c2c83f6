"""The node classes run the whole pipeline on a tiny official-layout folder, outside ComfyUI.

Inside ComfyUI the same classes get paths from folder_paths; here they are called with the loaded objects, which
is exactly what the host passes between nodes. CONDITIONING and LATENT follow core's conventions.
"""

import pytest
import torch

from wan_express.errors import InvalidInputError
from wan_express.loaders import find_components, load_dit, load_planned, load_text_encoder, load_vae, plan_dit
from wan_express.models import ClipVisionConfig, ClipVisionEncoder, WanConfig, WanDiT
from wan_express.models.latent_spaces import to_normalized, to_raw
from wan_express.nodes.component_nodes import WanExpressCLIPVisionEncode, WanExpressTextEncode, WanExpressVAEDecode
from wan_express.nodes.dit_loader_node import WanExpressDiTLoader, native_ops
from wan_express.nodes.native import NativeWanDiT
from wan_express.nodes.sampler_node import WanExpressSampler
from wan_express.sampling import DistillSchedule, sample, text_to_video
from wan_express.synthetic import TINY_CONFIG, random_weights_, write_model_folder, write_official_folder, write_vae

SAMPLER_DEFAULTS = dict(width=96, height=64, length=9, seed=3, schedule="distill",
                        denoising_step_list="1000,750,500,250", steps=4, shift=5.0, cfg=1.0, noise_source="cpu",
                        offload_idle_expert=True)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = write_model_folder(tmp_path_factory.mktemp("models") / "Wan2.1-T2V-tiny")
    parts = find_components(folder)
    return dict(dit=load_dit(folder, dtype=torch.float32),
                text_encoder=load_text_encoder(parts.require("text_encoder"), parts.require("tokenizer"),
                                               dtype=torch.float32),
                vae=load_vae(parts.require("vae")))


def test_text_encode_gives_core_conditioning_padded_to_512(pipeline):
    (conditioning,) = WanExpressTextEncode().encode(pipeline["text_encoder"], "a cat")
    context, extra = conditioning[0]
    real = pipeline["text_encoder"].encode(["a cat"])[0]
    assert context.shape == (1, 512, real.shape[1]) and extra == {}
    assert torch.equal(context[0, :real.shape[0]], real) and not context[0, real.shape[0]:].any()


def test_sampler_node_equals_the_library_run_and_returns_a_raw_latent(pipeline):
    (positive,) = WanExpressTextEncode().encode(pipeline["text_encoder"], "a cat")
    (latent,) = WanExpressSampler().generate(pipeline["dit"], positive, **SAMPLER_DEFAULTS)
    context = pipeline["text_encoder"].encode(["a cat"])[0][None]
    expected = sample(pipeline["dit"], text_to_video(context, width=96, height=64, frames=9),
                      schedule=DistillSchedule(), seed=3)
    assert latent["samples"].shape == (1, 16, 3, 8, 12)
    torch.testing.assert_close(to_normalized(latent["samples"]), expected, rtol=1e-5, atol=1e-5)
    (frames,) = WanExpressVAEDecode().decode(pipeline["vae"], latent)
    assert frames.shape == (9, 64, 96, 3) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1


def test_raw_and_normalised_latents_round_trip_with_the_vae_statistics():
    latent = torch.randn(1, 16, 2, 3, 4)
    raw = to_raw(latent)
    assert torch.allclose(to_normalized(raw), latent, atol=1e-6)
    assert torch.allclose(to_raw(torch.zeros(1, 48, 1, 1, 1))[0, :3, 0, 0, 0], torch.tensor([-0.2289, -0.0052, -0.1323]))
    with pytest.raises(InvalidInputError, match="16 or 48"):
        to_raw(torch.zeros(1, 4, 1, 1, 1))


def test_sampler_node_explains_missing_inputs(pipeline):
    (positive,) = WanExpressTextEncode().encode(pipeline["text_encoder"], "a cat")
    image = torch.rand(1, 64, 96, 3)
    with pytest.raises(InvalidInputError, match="text only; it takes no start_image"):
        WanExpressSampler().generate(pipeline["dit"], positive, **SAMPLER_DEFAULTS, start_image=image)
    with pytest.raises(InvalidInputError, match="needs the vae"):
        WanExpressSampler().generate(image_dit("i2v"), positive, **SAMPLER_DEFAULTS, start_image=image)
    with pytest.raises(InvalidInputError, match="holds 2 entries"):
        WanExpressSampler().generate(pipeline["dit"], positive + positive, **SAMPLER_DEFAULTS)
    with pytest.raises(InvalidInputError, match="concat_latent_image"):
        WanExpressSampler().generate(pipeline["dit"], [[positive[0][0], {"concat_latent_image": image}]],
                                     **SAMPLER_DEFAULTS)
    with pytest.raises(InvalidInputError, match="no negative context"):
        WanExpressSampler().generate(pipeline["dit"], positive, **{**SAMPLER_DEFAULTS, "cfg": 3.0})
    long_prompt = [[torch.ones(1, 600, 64), {}]]
    with pytest.raises(InvalidInputError, match="longer than 512 tokens"):
        WanExpressSampler().generate(pipeline["dit"], long_prompt, **SAMPLER_DEFAULTS)


def image_dit(model_type: str) -> WanDiT:
    in_dim, out_dim = {"i2v": (36, 16), "flf2v": (36, 16), "ti2v": (48, 48)}[model_type]
    config = WanConfig(model_type, in_dim, out_dim, clip_branch=model_type == "flf2v", dim=256, ffn_dim=512,
                       num_heads=2, num_layers=1, text_dim=64)
    model = WanDiT(config)
    random_weights_(model, 5)
    return model.eval().requires_grad_(False)


def test_image_models_run_through_the_nodes(pipeline, tmp_path):
    (positive,) = WanExpressTextEncode().encode(pipeline["text_encoder"], "a cat")
    start, end = torch.rand(1, 72, 120, 3), torch.rand(2, 72, 120, 3)
    size = dict(SAMPLER_DEFAULTS, width=80, height=48)
    (latent,) = WanExpressSampler().generate(image_dit("i2v"), positive, **size, vae=pipeline["vae"],
                                             start_image=start)
    assert latent["samples"].shape == (1, 16, 3, 6, 10)
    # FLF2V: start and end CLIP tokens concatenated (514), the end image is the last frame of its batch
    clip = ClipVisionEncoder(ClipVisionConfig(dim=1280, mlp_dim=256, num_heads=16, num_layers=2))
    random_weights_(clip, 6)
    (clip_output,) = WanExpressCLIPVisionEncode().encode(clip.eval(), start, end)
    assert clip_output.penultimate_hidden_states.shape == (1, 514, 1280)
    first_and_last = torch.stack([start[0], end[-1]]).permute(0, 3, 1, 2) * 2 - 1  # the end batch's LAST frame
    torch.testing.assert_close(clip_output.penultimate_hidden_states,
                               clip.encode(first_and_last).float().reshape(1, -1, 1280))
    (latent,) = WanExpressSampler().generate(image_dit("flf2v"), positive, **size, vae=pipeline["vae"],
                                             start_image=start, end_image=end, clip_vision_output=clip_output)
    assert latent["samples"].shape == (1, 16, 3, 6, 10) and torch.isfinite(latent["samples"]).all()
    # TI2V-5B: Wan2.2 VAE, first latent frame is the image's
    vae22 = load_vae(write_vae(tmp_path / "wan22_vae.safetensors", "2.2"))
    (latent,) = WanExpressSampler().generate(image_dit("ti2v"), positive, **dict(size, width=64, height=64),
                                             vae=vae22, start_image=start)
    assert latent["samples"].shape[1] == 48 and torch.isfinite(latent["samples"]).all()


def test_sampler_inputs_are_validated_when_the_prompt_is_queued():
    assert WanExpressSampler.VALIDATE_INPUTS(length=81, denoising_step_list="1000,750,500,250") is True
    assert "1 + 4k frames" in WanExpressSampler.VALIDATE_INPUTS(length=80)
    assert "77 or 81" in WanExpressSampler.VALIDATE_INPUTS(length=80)
    assert "whole numbers" in WanExpressSampler.VALIDATE_INPUTS(denoising_step_list="1000,x")


def test_a_ti2v_model_given_the_wan21_vae_is_told_which_vae_it_needs(pipeline):
    (positive,) = WanExpressTextEncode().encode(pipeline["text_encoder"], "a cat")
    with pytest.raises(InvalidInputError, match=r"Wan2\.2 latents \(48 channels\).*Wan2\.2_VAE\.pth"):
        WanExpressSampler().generate(image_dit("ti2v"), positive, **dict(SAMPLER_DEFAULTS, width=64, height=64),
                                     vae=pipeline["vae"], start_image=torch.rand(1, 64, 64, 3))


def test_denoise_below_one_regenerates_a_given_latent_from_a_later_step(pipeline):
    (positive,) = WanExpressTextEncode().encode(pipeline["text_encoder"], "a cat")
    (first,) = WanExpressSampler().generate(pipeline["dit"], positive, **SAMPLER_DEFAULTS)
    (again,) = WanExpressSampler().generate(pipeline["dit"], positive, **SAMPLER_DEFAULTS, latent=first, denoise=0.5)
    context = pipeline["text_encoder"].encode(["a cat"])[0][None]
    conditioning = text_to_video(context, width=96, height=64, frames=9)
    expected = sample(pipeline["dit"], conditioning, schedule=DistillSchedule(), seed=3,
                      init_latent=to_normalized(first["samples"]), start_step=2)
    torch.testing.assert_close(to_normalized(again["samples"]), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(again["samples"], first["samples"])
    with pytest.raises(InvalidInputError, match="needs a latent"):
        WanExpressSampler().generate(pipeline["dit"], positive, **SAMPLER_DEFAULTS, denoise=0.5)


def test_the_loaders_ffn_chunk_tokens_chunks_the_feed_forward_and_leaves_the_output_unchanged(tmp_path):
    optional = WanExpressDiTLoader.INPUT_TYPES()["optional"]
    assert list(optional)[-1] == "ffn_chunk_tokens"  # last: workflows saved before it keep their widget positions
    kind, options = optional["ffn_chunk_tokens"]
    assert kind == "INT" and options["default"] == 0 and options["min"] == 0 and "VRAM" in options["tooltip"]
    folder = tmp_path / "Wan2.1-T2V-tiny"
    write_official_folder(folder, TINY_CONFIG, seed=1)
    one_pass, chunked = (load_planned(plan_dit(folder), dtype=torch.float32, ops_factory=native_ops("auto", chunk),
                                      model_class=NativeWanDiT) for chunk in (0, 16))
    assert {block.block_ops.ffn_chunk_tokens for block in chunked.blocks} == {16}
    assert chunked.blocks[0].block_ops.token_chunks(45) == [slice(0, 16), slice(16, 32), slice(32, 45)]
    generator = torch.Generator().manual_seed(5)
    latent = torch.randn(1, 16, 3, 6, 10, generator=generator)  # 3 x 3 x 5 = 45 tokens: chunks of 16, 16, 13
    context = torch.randn(1, 9, TINY_CONFIG.text_dim, generator=generator)
    with torch.no_grad():
        expected, got = (model(latent, torch.tensor([700.0]), context) for model in (one_pass, chunked))
    # bit-identical: the CPU GEMM computes a row the same way at any row count that is a multiple of 16
    assert torch.equal(got, expected)
