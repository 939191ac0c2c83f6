"""The node classes run the whole pipeline on a tiny official-layout folder, outside ComfyUI.

Inside ComfyUI the same classes get paths from folder_paths; here they are called with the loaded objects, which
is exactly what the host passes between nodes. CONDITIONING and LATENT follow core's conventions.
"""

import pytest
import torch

from wan_express.demo import write_model_folder
from wan_express.errors import InvalidInputError
from wan_express.loaders import find_components, load_dit, load_text_encoder, load_vae
from wan_express.nodes.component_nodes import WanExpressTextEncode, WanExpressVAEDecode
from wan_express.nodes.sampler_node import WanExpressSampler
from wan_express.sampling import DistillSchedule, sample, text_to_video
from wan_express.sampling.latent_space import to_normalized, to_raw

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
    with pytest.raises(InvalidInputError, match="needs the vae"):
        WanExpressSampler().generate(pipeline["dit"], positive, **SAMPLER_DEFAULTS, start_image=image)
    with pytest.raises(InvalidInputError, match="no negative context"):
        WanExpressSampler().generate(pipeline["dit"], positive, **{**SAMPLER_DEFAULTS, "cfg": 3.0})
    long_prompt = [[torch.ones(1, 600, 64), {}]]
    with pytest.raises(InvalidInputError, match="longer than 512 tokens"):
        WanExpressSampler().generate(pipeline["dit"], long_prompt, **SAMPLER_DEFAULTS)
