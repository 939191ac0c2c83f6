"""Core ComfyUI graphs around the pack's DiT loader: its MODELs run under core's own samplers and Wan nodes.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (see tests/comfyui_server.py). One real ComfyUI serves the
whole module; API prompts are queued with POST /prompt. The DiTs, umT5 and the pack's own VAE are tiny synthetic
files in the official layouts; core's VAELoader only reads a Wan2.1 VAE at its real width (dim 96 is hard-coded in
comfy/sd.py), so models/vae/ holds a random full-size Wan2.1 VAE, written once in bf16, and every latent is tiny
(96x64, 9 frames -> [1, 16, 3, 8, 12]) so that core decodes it on CPU in seconds.

Core's KSampler (euler, simple, 4 steps on ModelSamplingSD3 shift 5) visits sigma 1, 0.9375, 0.8333, 0.625 -- the
timesteps of the pack's 4-step distill schedule 1000,750,500,250 at shift 5 -- and core's prepare_noise draws
torch.randn(latent.shape) from torch.manual_seed(seed) on the CPU, as the pack's noise source "cpu" does; so the
two samplers, driving the same loaded network, give the same latent up to float rounding.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from wan_express.models import ClipVisionConfig, ClipVisionEncoder, VaeConfig, WanConfig
from wan_express.models.latent_spaces import latent_space_of_vae
from wan_express.synthetic import (TINY_CONFIG, random_weights_, write_components, write_model_folder,
                                   write_official_folder)

from .comfyui_server import COMFYUI_PYTHON, requires_comfyui, running_comfyui

pytestmark = requires_comfyui

T2V_FOLDER = "Wan2.1-T2V-tiny/"
I2V_FOLDER = "Wan2.2-I2V-tiny/"
FLF_FOLDER = "Wan2.1-FLF2V-tiny/"
CLIP_FILE = "clip_vision_tiny.safetensors"
END_IMAGE = "end.png"
PAIR_FOLDER = "Wan2.2-T2V-A14B-tiny/"
CORE_VAE = "wan_2.1_vae_random.safetensors"
START_IMAGE = "start.png"
# A Wan2.2-I2V-style single model: 36 input channels (noise + mask + image latent), no CLIP branch.
I2V_CONFIG = WanConfig("i2v", 36, 16, clip_branch=False, dim=256, ffn_dim=512, num_heads=2, num_layers=1,
                       text_dim=TINY_CONFIG.text_dim)
# Wan2.1 FLF2V: CLIP branch with the first and last frames' tokens (2 x 257) and their position embedding.
FLF_CONFIG = WanConfig("flf2v", 36, 16, clip_branch=True, dim=256, ffn_dim=512, num_heads=2, num_layers=1,
                       text_dim=TINY_CONFIG.text_dim)
WIDTH, HEIGHT, LENGTH = 96, 64, 9
LATENT_SHAPE = [1, 16, 3, HEIGHT // 8, WIDTH // 8]
SEED = 42
SHIFT = 5.0
# max |core latent - pack latent| / max |core latent|. The first DiT call gets bit-identical inputs from both
# samplers; from the second on the latents differ by float rounding (one fp32 ulp in about half the elements), as
# core's Euler step is k-diffusion's x + (x - (x - v·σ)) / σ · (σ' - σ) and ours LightX2V's (x - σ·v) + σ'·v. A bf16
# network sees the latent only through the patch embedding's cast to bf16, so the end difference stays ~2e-7 (what
# every single-model graph and the pair in bf16 / fp8 show) unless such an element straddles a bf16 rounding point:
# then the network's own bf16 roundings carry one bf16 ulp to 1e-3..5e-3 at the end (one-element flips measured on
# CPU). Whether a graph hits one depends on its data and on the machine's kernels, not on the pack's code. Between
# core's two KSamplerAdvanced the latent makes a round trip (x / (1 - sigma), process_out, process_in,
# x (1 - sigma)) that moves it by float rounding; int8's per-token activation rounding turns that into ~7e-4.
LATENT_TOLERANCE = 1e-3
INT8_PAIR_TOLERANCE = 1e-2
# The single-model FP8 T2V graph hits such a flip on CPU: after step 1 one latent element sits on a bf16 tie
# (-0.4052734375 from our step, one fp32 ulp less in magnitude from core's), the two round to bf16 values 2^-9
# apart, and the latents end 1.25e-3 apart. The code before the fused-ops merge gives the same 1.25e-3 there.
FP8_T2V_TOLERANCE = 2e-3


def write_core_vae(path: Path, seed: int = 0) -> Path:
    """A random Wan2.1 VAE at the official width (96), official key names, bf16 safetensors (~250 MB)."""
    space = latent_space_of_vae("2.1")
    vae = space.vae_class(VaeConfig("2.1", dim=96, dec_dim=96, z_dim=space.channels))
    random_weights_(vae, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: tensor.to(torch.bfloat16).contiguous() for key, tensor in vae.state_dict().items()}, str(path))
    return path


def write_pair_folder(folder: Path) -> Path:
    """A tiny Wan2.2 T2V-A14B folder: high_noise_model/ and low_noise_model/ (different weights), umT5 and VAE."""
    write_official_folder(folder / "high_noise_model", TINY_CONFIG, seed=11)
    write_official_folder(folder / "low_noise_model", TINY_CONFIG, seed=12)
    return write_components(folder, TINY_CONFIG.text_dim)


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_native_base")
    models = base / "models" / "wan_express"
    write_model_folder(models / T2V_FOLDER.rstrip("/"))
    write_official_folder(models / I2V_FOLDER.rstrip("/"), I2V_CONFIG, seed=5)
    write_components(models / I2V_FOLDER.rstrip("/"), I2V_CONFIG.text_dim)
    write_pair_folder(models / PAIR_FOLDER.rstrip("/"))
    write_official_folder(models / FLF_FOLDER.rstrip("/"), FLF_CONFIG, seed=7)
    write_components(models / FLF_FOLDER.rstrip("/"), FLF_CONFIG.text_dim)
    clip = ClipVisionEncoder(ClipVisionConfig(dim=1280, mlp_dim=256, num_heads=16, num_layers=2))
    random_weights_(clip, 8)
    (base / "models" / "clip_vision").mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in clip.state_dict().items()},
              str(base / "models" / "clip_vision" / CLIP_FILE))
    write_core_vae(base / "models" / "vae" / CORE_VAE)
    (models / "Empty-Folder").mkdir()  # a model folder without weights, for the error message
    (base / "input").mkdir(parents=True, exist_ok=True)
    pixels = (torch.rand(72, 120, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    Image.fromarray(pixels.numpy()).save(base / "input" / START_IMAGE)
    Image.fromarray(pixels.flip(0).numpy()).save(base / "input" / END_IMAGE)
    with running_comfyui(base) as server:
        yield server, base


class Graph:
    """An API-format prompt built node by node; `add` returns the node id, `out(id, slot)` a link to an output."""

    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, **inputs) -> str:
        key = str(len(self.nodes) + 1)
        self.nodes[key] = {"class_type": class_type, "inputs": inputs}
        return key

    @staticmethod
    def out(node: str, slot: int = 0) -> list:
        return [node, slot]


def dit_loader(graph: Graph, folder: str, quantization: str) -> str:
    return graph.add("WanExpressDiTLoader", model=folder, quantization=quantization, dtype="bf16", file="",
                     lora="(none)", lora_strength=1.0, lora_expert="auto", lora_2="(none)", lora_2_strength=1.0,
                     lora_2_expert="auto")


def text_conditioning(graph: Graph, folder: str = T2V_FOLDER) -> tuple[list, list]:
    """(positive, negative) links from the pack's umT5 loader + encode (core CONDITIONING)."""
    encoder = graph.add("WanExpressTextEncoderLoader", model=folder, quantization="auto", device="cpu")
    positive = graph.add("WanExpressTextEncode", text_encoder=graph.out(encoder), text="a cat walking on the grass")
    negative = graph.add("WanExpressTextEncode", text_encoder=graph.out(encoder), text="blurry")
    return graph.out(positive), graph.out(negative)


def core_ksampler(graph: Graph, model: list, positive: list, negative: list, latent: list) -> str:
    shifted = graph.add("ModelSamplingSD3", model=model, shift=SHIFT)
    return graph.add("KSampler", model=graph.out(shifted), seed=SEED, steps=4, cfg=1.0, sampler_name="euler",
                     scheduler="simple", positive=positive, negative=negative, latent_image=latent, denoise=1.0)


def pack_sampler(graph: Graph, model: list, positive: list, negative: list, model_low: list | None = None) -> str:
    extra = {} if model_low is None else {"model_low": model_low}
    return graph.add("WanExpressSampler", model=model, positive=positive, negative=negative, width=WIDTH,
                     height=HEIGHT, length=LENGTH, seed=SEED, schedule="distill",
                     denoising_step_list="1000,750,500,250", steps=4, shift=SHIFT, cfg=1.0, noise_source="cpu",
                     offload_idle_expert=True, **extra)


def core_vae(graph: Graph) -> list:
    return graph.out(graph.add("VAELoader", vae_name=CORE_VAE))


def run(server, graph: Graph) -> tuple[dict, str]:
    """Queue the prompt; check it succeeded; return (outputs by node id, the server log it wrote)."""
    start = len(server.log())
    history = server.run_prompt(graph.nodes)
    log = server.log()[start:]
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:4000] + log[-4000:]
    return history["outputs"], log


def saved_latent(base: Path, outputs: dict, node: str) -> torch.Tensor:
    (entry,) = outputs[node]["latents"]
    path = base / "output" / entry["subfolder"] / entry["filename"]
    assert path.suffix == ".latent" and path.is_file()
    return load_file(str(path))["latent_tensor"]


def saved_images(base: Path, outputs: dict, node: str) -> list[Path]:
    paths = [base / "output" / image["subfolder"] / image["filename"] for image in outputs[node]["images"]]
    assert all(path.is_file() for path in paths)
    return paths


# Run by COMFYUI_PYTHON (it has PyAV, which core's SaveVideo writes with): an mp4's frames, size, codec and rate.
PROBE_VIDEO = """
import json, sys
import av
with av.open(sys.argv[1]) as container:
    stream = container.streams.video[0]
    frames = sum(1 for _ in container.decode(stream))
    print(json.dumps({"frames": frames, "width": stream.width, "height": stream.height,
                      "codec": stream.codec_context.name, "fps": float(stream.average_rate)}))
"""


def probe_video(path: Path) -> dict:
    result = subprocess.run([COMFYUI_PYTHON, "-c", PROBE_VIDEO, str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def relative_difference(core: torch.Tensor, ours: torch.Tensor) -> float:
    return ((core.float() - ours.float()).abs().max() / core.float().abs().max()).item()


@pytest.mark.parametrize("quantization,tolerance", [("fp8", FP8_T2V_TOLERANCE), ("int8", LATENT_TOLERANCE)])
def test_core_t2v_graph_runs_our_model_saves_a_video_and_matches_our_sampler(comfyui, quantization, tolerance):
    """Loader -> ModelSamplingSD3 -> KSampler -> VAEDecode (core VAE) -> CreateVideo -> SaveVideo, all core but the
    loader and the text nodes; the KSampler latent (SaveLatent) equals the pack sampler's on the same MODEL."""
    server, base = comfyui
    graph = Graph()
    loader = dit_loader(graph, T2V_FOLDER, quantization)
    positive, negative = text_conditioning(graph)
    empty = graph.add("EmptyHunyuanLatentVideo", width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1)
    ksampler = core_ksampler(graph, graph.out(loader), positive, negative, graph.out(empty))
    decoded = graph.add("VAEDecode", samples=graph.out(ksampler), vae=core_vae(graph))
    video = graph.add("CreateVideo", images=graph.out(decoded), fps=16.0)
    save_video = graph.add("SaveVideo", video=graph.out(video), filename_prefix=f"native/t2v_{quantization}",
                           format="mp4", codec="h264")
    save_core = graph.add("SaveLatent", samples=graph.out(ksampler), filename_prefix=f"native/t2v_{quantization}_core")
    ours = pack_sampler(graph, graph.out(loader), positive, negative)
    save_ours = graph.add("SaveLatent", samples=graph.out(ours), filename_prefix=f"native/t2v_{quantization}_ours")

    outputs, log = run(server, graph)
    assert "Missing VAE keys" not in log, log[-3000:]
    (video_file,) = saved_images(base, outputs, save_video)
    assert video_file.suffix == ".mp4" and video_file.parent == base / "output" / "native"
    assert video_file.stat().st_size > 1000
    assert probe_video(video_file) == {"frames": LENGTH, "width": WIDTH, "height": HEIGHT, "codec": "h264",
                                       "fps": 16.0}
    core, mine = saved_latent(base, outputs, save_core), saved_latent(base, outputs, save_ours)
    assert list(core.shape) == LATENT_SHAPE and list(mine.shape) == LATENT_SHAPE
    assert torch.isfinite(core).all() and torch.isfinite(mine).all()
    assert core.abs().max() > 0.1
    difference = relative_difference(core, mine)
    print(f"t2v {quantization}: max|core - ours| / max|core| = {difference:.3g}")
    assert difference < tolerance


def test_core_wan_image_to_video_conditioning_drives_our_i2v_model_in_both_samplers(comfyui):
    """Core LoadImage -> WanImageToVideo (core VAE encode) puts concat_latent_image / concat_mask in the
    conditioning; core's KSampler (concat through WAN21.concat_cond) and the pack sampler (its own concat of the
    same keys, no start_image) both run our 36-channel model on it, and agree."""
    server, base = comfyui
    graph = Graph()
    loader = dit_loader(graph, I2V_FOLDER, "fp8")
    positive, negative = text_conditioning(graph, I2V_FOLDER)
    vae = core_vae(graph)
    image = graph.add("LoadImage", image=START_IMAGE)
    i2v = graph.add("WanImageToVideo", positive=positive, negative=negative, vae=vae, width=WIDTH, height=HEIGHT,
                    length=LENGTH, batch_size=1, start_image=graph.out(image))
    ksampler = core_ksampler(graph, graph.out(loader), graph.out(i2v, 0), graph.out(i2v, 1), graph.out(i2v, 2))
    decoded = graph.add("VAEDecode", samples=graph.out(ksampler), vae=vae)
    save_frames = graph.add("SaveImage", images=graph.out(decoded), filename_prefix="native/i2v_core")
    save_core = graph.add("SaveLatent", samples=graph.out(ksampler), filename_prefix="native/i2v_core")
    ours = pack_sampler(graph, graph.out(loader), graph.out(i2v, 0), graph.out(i2v, 1))
    save_ours = graph.add("SaveLatent", samples=graph.out(ours), filename_prefix="native/i2v_ours")

    outputs, _ = run(server, graph)
    frames = saved_images(base, outputs, save_frames)
    assert len(frames) == LENGTH
    assert Image.open(frames[0]).size == (WIDTH, HEIGHT)
    core, mine = saved_latent(base, outputs, save_core), saved_latent(base, outputs, save_ours)
    assert list(core.shape) == LATENT_SHAPE and list(mine.shape) == LATENT_SHAPE
    assert torch.isfinite(core).all() and torch.isfinite(mine).all()
    difference = relative_difference(core, mine)
    print(f"i2v: max|core - ours| / max|core| = {difference:.3g}")
    assert difference < LATENT_TOLERANCE


@pytest.mark.parametrize("quantization,tolerance", [("fp8", LATENT_TOLERANCE), ("int8", INT8_PAIR_TOLERANCE)])
def test_wan22_pair_runs_through_two_core_ksampler_advanced_high_then_low(comfyui, quantization, tolerance):
    """An A14B folder gives model (high) and model_low (low); KSamplerAdvanced runs steps 0-2 on high with leftover
    noise and 2-end on low without new noise, as core's Wan2.2 templates do; the latent equals the pack sampler's
    own expert switch (distill boundary after step 2) on the same pair."""
    server, base = comfyui
    graph = Graph()
    loader = dit_loader(graph, PAIR_FOLDER, quantization)
    positive, negative = text_conditioning(graph, PAIR_FOLDER)
    empty = graph.add("EmptyHunyuanLatentVideo", width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1)
    high = graph.add("ModelSamplingSD3", model=graph.out(loader, 0), shift=SHIFT)
    low = graph.add("ModelSamplingSD3", model=graph.out(loader, 1), shift=SHIFT)
    common = dict(noise_seed=SEED, steps=4, cfg=1.0, sampler_name="euler", scheduler="simple", positive=positive,
                  negative=negative)
    first = graph.add("KSamplerAdvanced", model=graph.out(high), add_noise="enable", latent_image=graph.out(empty),
                      start_at_step=0, end_at_step=2, return_with_leftover_noise="enable", **common)
    second = graph.add("KSamplerAdvanced", model=graph.out(low), add_noise="disable", latent_image=graph.out(first),
                       start_at_step=2, end_at_step=10000, return_with_leftover_noise="disable", **common)
    decoded = graph.add("VAEDecode", samples=graph.out(second), vae=core_vae(graph))
    save_frames = graph.add("SaveImage", images=graph.out(decoded), filename_prefix=f"native/pair_{quantization}_core")
    save_core = graph.add("SaveLatent", samples=graph.out(second), filename_prefix=f"native/pair_{quantization}_core")
    ours = pack_sampler(graph, graph.out(loader, 0), positive, negative, model_low=graph.out(loader, 1))
    save_ours = graph.add("SaveLatent", samples=graph.out(ours), filename_prefix=f"native/pair_{quantization}_ours")

    outputs, log = run(server, graph)
    lowered = log.lower()
    assert "error" not in lowered and "traceback" not in lowered and "exception" not in lowered, log[-4000:]
    assert len(saved_images(base, outputs, save_frames)) == LENGTH
    core, mine = saved_latent(base, outputs, save_core), saved_latent(base, outputs, save_ours)
    assert list(core.shape) == LATENT_SHAPE and torch.isfinite(core).all() and torch.isfinite(mine).all()
    difference = relative_difference(core, mine)
    print(f"pair {quantization}: max|core - ours| / max|core| = {difference:.3g}")
    assert difference < tolerance


def test_a_loader_error_names_the_folder_as_the_user_knows_it(comfyui):
    server, base = comfyui
    graph = Graph()
    loader = dit_loader(graph, "Empty-Folder/", "auto")
    sampled = pack_sampler(graph, graph.out(loader), *text_conditioning(graph))
    graph.add("SaveLatent", samples=graph.out(sampled), filename_prefix="native/error")
    history = server.run_prompt(graph.nodes)
    assert history["status"]["status_str"] == "error"
    error = next(message[1] for message in history["status"]["messages"] if message[0] == "execution_error")
    assert error["exception_type"].endswith("MissingComponentError"), error
    assert error["exception_message"].startswith("models/wan_express/Empty-Folder: no DiT weights found"), error
    assert str(base) not in error["exception_message"], error


def test_core_first_last_frame_conditioning_with_our_clip_features_drives_our_flf2v_model(comfyui):
    """The pack's CLIP vision encode gives core CLIP_VISION_OUTPUTs; core's WanFirstLastFrameToVideo concatenates the
    start and end tokens (514) and builds the 4-channel frame mask; core's KSampler and the pack sampler both run our
    FLF2V model (CLIP branch + position embedding) on that conditioning and agree. The model runs in bf16: core
    normalises the image latents with its own arithmetic (~1e-7 apart), which int8's per-token activation rounding
    would magnify to ~1e-3 (measured 1.3e-3) and hide what this test checks, the conditioning."""
    server, base = comfyui
    graph = Graph()
    loader = dit_loader(graph, FLF_FOLDER, "bf16")
    positive, negative = text_conditioning(graph, FLF_FOLDER)
    vae = core_vae(graph)
    start, end = graph.add("LoadImage", image=START_IMAGE), graph.add("LoadImage", image=END_IMAGE)
    clip = graph.add("WanExpressCLIPVisionLoader", model=CLIP_FILE)
    start_tokens = graph.add("WanExpressCLIPVisionEncode", clip_vision=graph.out(clip), start_image=graph.out(start))
    end_tokens = graph.add("WanExpressCLIPVisionEncode", clip_vision=graph.out(clip), start_image=graph.out(end))
    flf = graph.add("WanFirstLastFrameToVideo", positive=positive, negative=negative, vae=vae, width=WIDTH,
                    height=HEIGHT, length=LENGTH, batch_size=1, clip_vision_start_image=graph.out(start_tokens),
                    clip_vision_end_image=graph.out(end_tokens), start_image=graph.out(start),
                    end_image=graph.out(end))
    ksampler = core_ksampler(graph, graph.out(loader), graph.out(flf, 0), graph.out(flf, 1), graph.out(flf, 2))
    save_core = graph.add("SaveLatent", samples=graph.out(ksampler), filename_prefix="native/flf_core")
    ours = pack_sampler(graph, graph.out(loader), graph.out(flf, 0), graph.out(flf, 1))
    save_ours = graph.add("SaveLatent", samples=graph.out(ours), filename_prefix="native/flf_ours")

    outputs, _ = run(server, graph)
    core, mine = saved_latent(base, outputs, save_core), saved_latent(base, outputs, save_ours)
    assert list(core.shape) == LATENT_SHAPE and torch.isfinite(core).all()
    difference = relative_difference(core, mine)
    print(f"flf2v: max|core - ours| / max|core| = {difference:.3g}")
    assert difference < LATENT_TOLERANCE

