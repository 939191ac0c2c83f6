"""Wan2.1 VACE in core ComfyUI graphs: the pack's DiT loader attaches a VACE module file (its ``vace_module`` input)
to a Wan2.1 T2V file, core's WanVaceToVideo builds the conditioning, core's KSampler samples our model and core's
VAEDecode decodes it; our VACE conditioning node feeds core's KSampler too; a module the model cannot take (a Wan2.2
pair, another width) is refused with a sentence naming the files as models/... paths.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (see tests/comfyui_server.py); one server for the module.
The DiT is a tiny VACE model split as such files are shipped: the T2V base in one file of models/diffusion_models/,
the ``vace_*`` tensors (``diffusion_model.`` prefix) in another. Core's VAE is the random full-width Wan2.1 VAE of
tests/test_comfyui_native_graphs.py (core reads no other width); every latent is [1, 16, 3, 8, 12].

What shows the control reaching the model: strength 1 and strength 0 give different latents, strength 0 gives the
T2V base's own latent (the hints are scaled by the strength, nothing else changes), and the pack sampler on core's
VACE conditioning gives core KSampler's latent (the same network sees the same VACE context either way).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from wan_express.models import WanConfig
from wan_express.synthetic import write_model_folder

from .comfyui_server import requires_comfyui, running_comfyui
from .loader_files import save, tiny_weights
from .test_comfyui_native_graphs import (CORE_VAE, HEIGHT, LATENT_SHAPE, LATENT_TOLERANCE, LENGTH, PAIR_FOLDER,
                                         T2V_FOLDER, WIDTH, Graph, core_ksampler, core_vae, pack_sampler,
                                         relative_difference, run, saved_images, saved_latent, text_conditioning,
                                         write_core_vae, write_pair_folder)
from .test_vace_loading import split
from .test_vace_model import TINY_VACE

pytestmark = requires_comfyui

BASE_FILE = "wan2.1_t2v_vace_base_tiny.safetensors"
MODULE_FILE = "Wan2_1-VACE_module_tiny.safetensors"
WIDER_MODULE_FILE = "Wan2_1-VACE_module_wider.safetensors"  # width 128: not for the width-256 base
CONTROL_IMAGE = "control.png"


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_vace_base")
    models = base / "models"
    weights = tiny_weights(TINY_VACE, seed=6)
    dit, module = split(weights)
    save({key: tensor.to(torch.bfloat16) for key, tensor in dit.items()}, models / "diffusion_models" / BASE_FILE)
    save({f"diffusion_model.{key}": tensor.to(torch.bfloat16) for key, tensor in module.items()},
         models / "diffusion_models" / MODULE_FILE)
    wider = WanConfig("t2v", 16, 16, dim=128, ffn_dim=256, num_heads=1, num_layers=4, text_dim=TINY_VACE.text_dim,
                      vace_layers=TINY_VACE.vace_layers, vace_in_dim=TINY_VACE.vace_in_dim)
    save(split(tiny_weights(wider, seed=7))[1], models / "diffusion_models" / WIDER_MODULE_FILE)
    write_model_folder(models / "wan_express" / T2V_FOLDER.rstrip("/"))  # umT5 (text dim 64, as TINY_VACE) + VAE
    write_pair_folder(models / "wan_express" / PAIR_FOLDER.rstrip("/"))
    write_core_vae(models / "vae" / CORE_VAE)
    (base / "input").mkdir(parents=True, exist_ok=True)
    pixels = (torch.rand(HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    Image.fromarray(pixels.numpy()).save(base / "input" / CONTROL_IMAGE)
    with running_comfyui(base) as server:
        yield server, base


def dit_loader(graph: Graph, model: str, vace_module: str) -> list:
    return graph.out(graph.add("WanExpressDiTLoader", model=model, quantization="auto", dtype="bf16", file="",
                               lora="(none)", lora_strength=1.0, lora_expert="auto", lora_2="(none)",
                               lora_2_strength=1.0, lora_2_expert="auto", attention="auto", compile="off",
                               vace_module=vace_module))


def control(graph: Graph) -> tuple[list, list]:
    """(control video, control mask) links: the control image repeated over the frames; the right half of every
    frame white (generate), the left half black (keep)."""
    image = graph.add("LoadImage", image=CONTROL_IMAGE)
    video = graph.add("RepeatImageBatch", image=graph.out(image), amount=LENGTH)
    keep = graph.add("SolidMask", value=0.0, width=WIDTH, height=HEIGHT)
    generate = graph.add("SolidMask", value=1.0, width=WIDTH // 2, height=HEIGHT)
    mask = graph.add("MaskComposite", destination=graph.out(keep), source=graph.out(generate), x=WIDTH // 2, y=0,
                     operation="add")
    return graph.out(video), graph.out(mask)


def core_vace_graph(strength: float, prefix: str, with_pack_sampler: bool = False) -> Graph:
    """Loader (base + VACE module) -> WanVaceToVideo -> ModelSamplingSD3 -> KSampler -> SaveLatent and
    VAEDecode -> SaveImage; optionally the pack sampler on the same MODEL and conditioning -> SaveLatent."""
    graph = Graph()
    model = dit_loader(graph, BASE_FILE, MODULE_FILE)
    positive, negative = text_conditioning(graph)
    vae = core_vae(graph)
    video, mask = control(graph)
    vace = graph.add("WanVaceToVideo", positive=positive, negative=negative, vae=vae, width=WIDTH, height=HEIGHT,
                     length=LENGTH, batch_size=1, strength=strength, control_video=video, control_masks=mask)
    sampled = core_ksampler(graph, model, graph.out(vace, 0), graph.out(vace, 1), graph.out(vace, 2))
    graph.add("SaveLatent", samples=graph.out(sampled), filename_prefix=f"{prefix}/core")
    decoded = graph.add("VAEDecode", samples=graph.out(sampled), vae=vae)
    graph.add("SaveImage", images=graph.out(decoded), filename_prefix=f"{prefix}/frames")
    if with_pack_sampler:
        ours = pack_sampler(graph, model, graph.out(vace, 0), graph.out(vace, 1))
        graph.add("SaveLatent", samples=graph.out(ours), filename_prefix=f"{prefix}/pack")
    return graph


def node(graph: Graph, class_type: str) -> str:
    return next(key for key, entry in graph.nodes.items() if entry["class_type"] == class_type)


def latent_of(base, outputs, graph: Graph, prefix: str) -> torch.Tensor:
    saver = next(key for key, entry in graph.nodes.items()
                 if entry["class_type"] == "SaveLatent" and entry["inputs"]["filename_prefix"] == prefix)
    return saved_latent(base, outputs, saver)


def test_core_vace_graph_samples_our_vace_model_and_the_control_reaches_it(comfyui):
    server, base = comfyui
    choices, options = server.get("/object_info/WanExpressDiTLoader")["WanExpressDiTLoader"]["input"]["optional"][
        "vace_module"]
    assert choices[0] == options["default"] == "(none)" and MODULE_FILE in choices
    full = core_vace_graph(1.0, "vace_on", with_pack_sampler=True)
    outputs, log = run(server, full)
    assert f"VACE ({len(TINY_VACE.vace_layers)} hint blocks)" in log, log[-3000:]
    latent = latent_of(base, outputs, full, "vace_on/core")
    assert list(latent.shape) == LATENT_SHAPE and torch.isfinite(latent).all()
    frames = saved_images(base, outputs, node(full, "SaveImage"))
    assert len(frames) == LENGTH
    assert all(Image.open(path).size == (WIDTH, HEIGHT) for path in frames)
    # Our sampler on core's VACE conditioning (its vace_* keys) and core's KSampler drive the same network alike.
    assert relative_difference(latent, latent_of(base, outputs, full, "vace_on/pack")) <= LATENT_TOLERANCE

    off = core_vace_graph(0.0, "vace_off")
    outputs_off, _ = run(server, off)
    latent_off = latent_of(base, outputs_off, off, "vace_off/core")
    assert relative_difference(latent, latent_off) > 1e-2  # the control changes the result

    plain = Graph()  # the T2V base alone, same seed, an empty latent of the same shape
    model = dit_loader(plain, BASE_FILE, "(none)")
    positive, negative = text_conditioning(plain)
    empty = plain.add("EmptyHunyuanLatentVideo", width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1)
    sampled = core_ksampler(plain, model, positive, negative, plain.out(empty))
    plain.add("SaveLatent", samples=plain.out(sampled), filename_prefix="vace_plain/core")
    outputs_plain, _ = run(server, plain)
    assert relative_difference(latent_of(base, outputs_plain, plain, "vace_plain/core"), latent_off) <= 1e-5


def test_our_vace_conditioning_node_feeds_cores_ksampler(comfyui):
    server, base = comfyui
    graph = Graph()
    model = dit_loader(graph, BASE_FILE, MODULE_FILE)
    positive, negative = text_conditioning(graph)
    vae = graph.add("WanExpressVAELoader", model=T2V_FOLDER, dtype="auto")
    video, mask = control(graph)
    vace = graph.add("WanExpressVaceConditioning", positive=positive, negative=negative, vae=graph.out(vae),
                     width=WIDTH, height=HEIGHT, length=LENGTH, strength=1.0, control_video=video,
                     control_masks=mask)
    empty = graph.add("EmptyHunyuanLatentVideo", width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1)
    sampled = core_ksampler(graph, model, graph.out(vace, 0), graph.out(vace, 1), graph.out(empty))
    graph.add("SaveLatent", samples=graph.out(sampled), filename_prefix="vace_mixed/core")
    outputs, _ = run(server, graph)
    latent = latent_of(base, outputs, graph, "vace_mixed/core")
    assert list(latent.shape) == LATENT_SHAPE and torch.isfinite(latent).all()


def loader_error(server, model: str, vace_module: str) -> dict:
    graph = Graph()
    sampled = pack_sampler(graph, dit_loader(graph, model, vace_module), *text_conditioning(graph))
    graph.add("SaveLatent", samples=graph.out(sampled), filename_prefix="vace_refused/error")
    history = server.run_prompt(graph.nodes)
    assert history["status"]["status_str"] == "error"
    error = next(message[1] for message in history["status"]["messages"] if message[0] == "execution_error")
    assert error["exception_type"].endswith("ModelFormatError"), error
    return error


@pytest.mark.parametrize("model, vace_module, sentence", [
    (PAIR_FOLDER, MODULE_FILE, f"models/wan_express/{PAIR_FOLDER.rstrip('/')}: a VACE module attaches to a Wan2.1 "
                               "T2V model, not to a Wan2.2 pair"),
    (BASE_FILE, WIDER_MODULE_FILE, f"models/diffusion_models/{WIDER_MODULE_FILE}: this VACE module is for a model of "
                                   f"width 128, but the base model models/diffusion_models/{BASE_FILE} has width 256"),
])
def test_a_vace_module_the_model_cannot_take_is_refused_in_words(comfyui, model, vace_module, sentence):
    server, base = comfyui
    error = loader_error(server, model, vace_module)
    assert error["exception_message"].startswith(sentence), error
    assert str(base) not in error["exception_message"], error
