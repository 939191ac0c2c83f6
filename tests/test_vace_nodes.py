"""The VACE conditioning node and the sampler node, outside ComfyUI: our node's conditioning (core's ``vace_*`` keys)
through the Wan Express sampler equals the library run; core's keys without our node are read the same way. The DiT
loader's ``vace_module`` widget: (none) by default; its load (a module file on a T2V base, built as the node builds
it) takes core's ``diffusion_model`` call with core's ``vace_context`` / ``vace_strength`` and equals the library's
VACE model; a Wan2.2 pair with a module is refused in words (the file choice itself is tested in a real ComfyUI,
tests/test_comfyui_vace.py)."""

import pytest
import torch

from wan_express.errors import InvalidInputError, ModelFormatError
from wan_express.loaders import load_dit, load_planned, load_vae, plan_dit
from wan_express.models import WanVaceDiT
from wan_express.nodes.dit_loader_node import NO_VACE_MODULE, WanExpressDiTLoader
from wan_express.nodes.native import NativeOps, NativeWanDiT
from wan_express.models.latent_spaces import to_normalized
from wan_express.nodes.sampler_node import WanExpressSampler
from wan_express.nodes.vace_node import WanExpressVaceConditioning
from wan_express.sampling import DistillSchedule, sample
from wan_express.sampling.vace import vace_conditioning, vace_to_video
from wan_express.synthetic import TINY_CONFIG, write_official_folder, write_vae

from .loader_files import save, tiny_weights
from .test_vace_loading import split
from .test_vace_model import TINY_VACE
from .test_vace_model import inputs as model_inputs

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


def test_the_loader_offers_no_vace_module_by_default():
    choices, options = WanExpressDiTLoader.INPUT_TYPES()["optional"]["vace_module"]
    assert choices[0] == NO_VACE_MODULE == options["default"] == "(none)"


def test_a_vace_module_loaded_as_the_node_does_takes_cores_vace_call(tmp_path):
    weights = tiny_weights(TINY_VACE, seed=4)
    base, module = split(weights)
    base_path = save(base, tmp_path / "wan2.1_t2v_tiny.safetensors")
    module_path = save({f"diffusion_model.{k}": v for k, v in module.items()}, tmp_path / "vace_module.safetensors")
    model = load_planned(plan_dit(base_path), dtype=torch.float32, ops_factory=lambda layers: NativeOps(layers),
                         model_class=NativeWanDiT, vace_module=module_path)
    assert isinstance(model, NativeWanDiT) and model.config.vace_layers == TINY_VACE.vace_layers
    reference = WanVaceDiT.from_state_dict({k: v.float() for k, v in weights.items()})
    x, vace, context = model_inputs(TINY_VACE)
    t = torch.tensor([900.0, 400.0])
    padded = torch.nn.functional.pad(context, (0, 0, 0, 512 - context.shape[1]))
    with torch.no_grad():  # core's WAN21_Vace call: the contexts stacked [B, 1, 96, F, H, W], one strength each
        got = model(x, t, context=padded, transformer_options={}, vace_context=vace[:, None], vace_strength=[0.7])
        off = model(x, t, context=padded, transformer_options={}, vace_context=vace[:, None], vace_strength=[0.0])
        expected = reference(x, t, context, vace, 0.7)
        plain = reference(x, t, context)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-4
    assert ((off - plain).abs().max() / plain.abs().max()).item() <= 1e-4
    assert (got - off).abs().max() > 1e-3 * off.abs().max()


def test_a_vace_module_on_a_wan22_pair_is_refused_in_words(tmp_path):
    for expert, seed in (("high_noise_model", 1), ("low_noise_model", 2)):
        write_official_folder(tmp_path / "Wan2.2-T2V-A14B" / expert, TINY_CONFIG, seed=seed)
    _, module = split(tiny_weights(TINY_VACE, seed=4))
    module_path = save(module, tmp_path / "vace_module.safetensors")
    with pytest.raises(ModelFormatError, match="VACE module attaches to a Wan2.1 T2V model, not to a Wan2.2 pair"):
        load_planned(plan_dit(tmp_path / "Wan2.2-T2V-A14B"), model_class=NativeWanDiT, vace_module=module_path)
