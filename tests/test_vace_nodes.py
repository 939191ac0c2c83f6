"""The VACE conditioning node and the sampler node, outside ComfyUI: our node's conditioning (core's ``vace_*`` keys)
through the Wan Express sampler equals the library run; core's keys without our node are read the same way."""

import pytest
import torch

from wan_express.errors import InvalidInputError
from wan_express.loaders import load_dit, load_vae
from wan_express.models.latent_spaces import to_normalized
from wan_express.nodes.sampler_node import WanExpressSampler
from wan_express.nodes.vace_node import WanExpressVaceConditioning
from wan_express.sampling import DistillSchedule, sample
from wan_express.sampling.vace import vace_conditioning, vace_to_video
from wan_express.synthetic import TINY_CONFIG, write_official_folder, write_vae

from .test_vace_model import TINY_VACE

WIDTH, HEIGHT, LENGTH = 32, 32, 5
SAMPLER = dict(width=WIDTH, height=HEIGHT, length=LENGTH, seed=3, schedule="distill",
               denoising_step_list="1000,750,500,250", steps=4, shift=5.0, cfg=1.0, noise_source="cpu",
               offload_idle_expert=True)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vace")
    write_official_folder(root / "vace", TINY_VACE, seed=2)
    write_official_folder(root / "t2v", TINY_CONFIG, seed=2)
    return dict(dit=load_dit(root / "vace", dtype=torch.float32), t2v=load_dit(root / "t2v", dtype=torch.float32),
                vae=load_vae(write_vae(root / "vae.pth")))


def prompt(seed):
    context = torch.zeros(1, 512, TINY_VACE.text_dim)
    context[:, :7] = torch.randn(1, 7, TINY_VACE.text_dim, generator=torch.Generator().manual_seed(seed))
    return [[context, {}]]


def inputs():
    generator = torch.Generator().manual_seed(5)
    video = torch.rand(LENGTH, HEIGHT, WIDTH, 3, generator=generator)
    masks = torch.zeros(LENGTH, HEIGHT, WIDTH)
    masks[:, 8:24, 8:24] = 1.0
    reference = torch.rand(1, HEIGHT, WIDTH, 3, generator=generator)
    return video, masks, reference


def test_node_then_sampler_equals_the_library(parts):
    video, masks, reference = inputs()
    positive, negative, trim = WanExpressVaceConditioning().condition(
        prompt(1), prompt(2), parts["vae"], WIDTH, HEIGHT, LENGTH, 0.8, control_video=video, control_masks=masks,
        reference_image=reference)
    assert trim == 1
    extra = positive[0][1]
    assert extra["vace_frames"][0].shape == (1, 32, 3, HEIGHT // 8, WIDTH // 8)
    assert extra["vace_mask"][0].shape == (1, 64, 3, HEIGHT // 8, WIDTH // 8) and extra["vace_strength"] == [0.8]
    (latent,) = WanExpressSampler().generate(parts["dit"], positive, **SAMPLER, negative=negative)

    vae = parts["vae"]
    vace = vace_conditioning(lambda v: vae.encode(v[None])[0].float(), LENGTH, HEIGHT, WIDTH,
                             frames=video.permute(3, 0, 1, 2) * 2 - 1, mask=masks,
                             reference_images=[reference[0].permute(2, 0, 1) * 2 - 1], strength=0.8)
    expected = sample(parts["dit"], vace_to_video(prompt(1)[0][0][:, :512], vace), schedule=DistillSchedule(), seed=3)
    got = to_normalized(latent["samples"])
    assert got.shape == expected.shape == (1, 16, 3, HEIGHT // 8, WIDTH // 8)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-4


def test_vace_conditioning_on_a_plain_t2v_model_is_refused(parts):
    positive, _, _ = WanExpressVaceConditioning().condition(prompt(1), prompt(2), parts["vae"], WIDTH, HEIGHT,
                                                            LENGTH, 1.0)
    with pytest.raises(InvalidInputError, match="not a Wan2.1 VACE model"):
        WanExpressSampler().generate(parts["t2v"], positive, **SAMPLER)


def test_chained_vace_conditionings_are_refused(parts):
    node = WanExpressVaceConditioning()
    positive, negative, _ = node.condition(prompt(1), prompt(2), parts["vae"], WIDTH, HEIGHT, LENGTH, 1.0)
    positive, _, _ = node.condition(positive, negative, parts["vae"], WIDTH, HEIGHT, LENGTH, 1.0)
    with pytest.raises(InvalidInputError, match="2 chained VACE"):
        WanExpressSampler().generate(parts["dit"], positive, **SAMPLER)
