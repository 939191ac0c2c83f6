"""Every shipped example workflow runs in a real ComfyUI on tiny models and saves its mp4.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (see tests/comfyui_server.py). One server serves the module.
Each workflow is converted from its UI format to the API prompt the Run button sends (notes left out) and queued
through POST /prompt with only the video size made small (96x64, 9 frames): every model choice is the shipped
file or folder name, which exists under the same name and in the same layout (official folders, LightX2V FP8 /
INT8 single files, a LightX2V config JSON, LoRAs in LightX2V's key style) as a tiny random model. The websocket
(/ws) shows the sampler's progress and previews; POST /interrupt during sampling or decoding leaves nothing
behind that changes the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from wan_express.models import WanConfig
from wan_express.models.clip_vision import ClipVisionConfig, ClipVisionEncoder
from wan_express.synthetic import (TINY_CONFIG, random_weights_, write_components, write_model_folder,
                                   write_official_folder, write_text_encoder, write_tokenizer, write_vae)

from .comfyui_server import new_client_id, read_video, requires_comfyui, running_comfyui, ui_to_api, write_mp4
from .loader_files import tiny_weights, write_lightx2v
from .test_lora_apply import extractor_lora, float_model

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
WORKFLOW_FILES = sorted(path.name for path in WORKFLOWS.glob("*.json"))
# The export workflow writes a model file instead of a video.
CONVERT_FILES = [name for name in WORKFLOW_FILES if '"WanExpressConvert"' in (WORKFLOWS / name).read_text()]
VIDEO_FILES = [name for name in WORKFLOW_FILES if name not in CONVERT_FILES]

pytestmark = requires_comfyui

TEXT_DIM = TINY_CONFIG.text_dim
A14B_I2V = WanConfig("i2v", 36, 16, clip_branch=False, dim=256, ffn_dim=512, num_heads=2, num_layers=1,
                     text_dim=TEXT_DIM)
WAN21_I2V = WanConfig("i2v", 36, 16, clip_branch=True, dim=256, ffn_dim=512, num_heads=2, num_layers=1,
                      text_dim=TEXT_DIM)
FLF2V = WanConfig("flf2v", 36, 16, clip_branch=True, dim=256, ffn_dim=512, num_heads=2, num_layers=1,
                  text_dim=TEXT_DIM)
TI2V = WanConfig("ti2v", 48, 48, dim=256, ffn_dim=512, num_heads=2, num_layers=1, text_dim=TEXT_DIM)
VACE = WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=TEXT_DIM,
                 vace_layers=(0, 1), vace_in_dim=96)
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
# The LightX2V distill LoRAs the loader-LoRA workflows name (formats.md §4.7, §9.6), and the expert each must reach.
T2V_LORA = "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"
I2V_LORAS = {"high": "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors",
             "low": "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors"}
T2V_A14B_LORAS = ("wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors",
                  "wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors")
NO_LORA = "(none)"
# Single DiT files in models/diffusion_models/: name -> (config, codes, seed).
SINGLE_FILES = {
    "wan2.1_t2v_14b_scaled_fp8_e4m3_lightx2v_4step.safetensors": (TINY_CONFIG, "fp8", 3),
    "wan2.1_i2v_480p_int8_lightx2v_4step.safetensors": (WAN21_I2V, "int8", 4),
    "wan2.2_i2v_A14b_high_noise_scaled_fp8_e4m3_lightx2v_4step.safetensors": (A14B_I2V, "fp8", 5),
    "wan2.2_i2v_A14b_low_noise_scaled_fp8_e4m3_lightx2v_4step.safetensors": (A14B_I2V, "fp8", 6),
    "wan2.2_i2v_A14b_high_noise_int8_lightx2v_4step.safetensors": (A14B_I2V, "int8", 7),
    "wan2.2_i2v_A14b_low_noise_int8_lightx2v_4step.safetensors": (A14B_I2V, "int8", 8),
}
WIDTH, HEIGHT, LENGTH = 96, 64, 9
MULTI_STEPS = 8


def write_clip_vision(path: Path) -> Path:
    """A random CLIP vision tower in the official .pth layout (``visual.*``), ViT-H width (1280, which Wan's image
    embedding reads) with two thin blocks; the loader keeps the first, as it keeps 31 of the real 32."""
    tower = ClipVisionEncoder(ClipVisionConfig(dim=1280, mlp_dim=256, num_heads=16, num_layers=3))
    random_weights_(tower, 9)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"visual.{key}": value.half().contiguous() for key, value in tower.state_dict().items()}, str(path))
    return path


def write_lightx2v_lora(path: Path, config: WanConfig, seed: int) -> Path:
    """A tiny distill LoRA for ``config`` in LightX2V's key style (``diffusion_model.<module>.lora_up/lora_down``,
    ``.diff`` / ``.diff_b`` / ``.diff_m``), bf16, with an ``.alpha`` per pair equal to the rank (scale 1)."""
    tensors = extractor_lora(float_model(config, seed=seed), seed, rank=4, size=0.5)
    for key in [k for k in tensors if k.endswith(".lora_up.weight")]:
        tensors[key.removesuffix(".lora_up.weight") + ".alpha"] = torch.tensor(4.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(path))
    return path


def write_models(models: Path) -> None:
    """Every file and folder the workflows name, as tiny random models in the real layouts."""
    folders = models / "wan_express"
    write_model_folder(folders / "Wan2.1-T2V-14B")
    write_model_folder(folders / "Wan2.1-T2V-tiny")
    for name, config, seeds in (("Wan2.2-I2V-A14B", A14B_I2V, (1, 2)), ("Wan2.2-T2V-A14B", TINY_CONFIG, (11, 12))):
        write_official_folder(folders / name / "high_noise_model", config, seed=seeds[0])
        write_official_folder(folders / name / "low_noise_model", config, seed=seeds[1])
        write_components(folders / name, TEXT_DIM)
    write_components(folders / "Wan2.1-I2V-14B-480P", TEXT_DIM)
    write_official_folder(folders / "Wan2.1-VACE-14B", VACE, seed=15)
    write_components(folders / "Wan2.1-VACE-14B", TEXT_DIM)
    write_official_folder(folders / "Wan2.1-FLF2V-14B-720P", FLF2V, seed=13)
    write_components(folders / "Wan2.1-FLF2V-14B-720P", TEXT_DIM)
    clip = write_clip_vision(folders / "Wan2.1-I2V-14B-480P" / CLIP_FILE)
    shutil.copy(clip, folders / "Wan2.1-FLF2V-14B-720P" / CLIP_FILE)
    ti2v = folders / "Wan2.2-TI2V-5B"
    write_official_folder(ti2v, TI2V, seed=14)
    tokenizer = write_tokenizer(ti2v)
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    write_text_encoder(ti2v / "models_t5_umt5-xxl-enc-bf16.pth", len(vocab), TEXT_DIM, seed=1)
    write_vae(ti2v / "Wan2.2_VAE.pth", "2.2", seed=2)
    shutil.copy(WORKFLOWS / "lightx2v" / "wan22_i2v_a14b_int8_4step.json", folders)
    for name, (config, codes, seed) in SINGLE_FILES.items():
        write_lightx2v(models / "diffusion_models" / name, tiny_weights(config, seed), codes)
    loras = models / "loras"
    write_lightx2v_lora(loras / T2V_LORA, TINY_CONFIG, seed=31)
    write_lightx2v_lora(loras / I2V_LORAS["high"], A14B_I2V, seed=32)
    write_lightx2v_lora(loras / I2V_LORAS["low"], A14B_I2V, seed=33)
    for seed, name in enumerate(T2V_A14B_LORAS, start=34):
        write_lightx2v_lora(loras / name, TINY_CONFIG, seed=seed)


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    write_models(base / "models")
    (base / "input").mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("example.png", "example_end.png")):
        pixels = (torch.rand(72, 120, 3, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)
        Image.fromarray(pixels.numpy()).save(base / "input" / name)
    write_mp4(base / "input" / "example.mp4", torch.rand(12, 72, 120, 3, generator=torch.Generator().manual_seed(7)))
    with running_comfyui(base) as server:
        yield server, base, server.get("/object_info")


def api_prompt(object_info: dict, workflow: str) -> dict:
    """The shipped workflow as the API prompt the front end sends, with the video made small and the official
    multi-step schedules cut to `MULTI_STEPS` steps (a tiny model's step costs ~0.1 s on a CPU, in bf16)."""
    prompt = ui_to_api(json.loads((WORKFLOWS / workflow).read_text()), object_info)
    for node in prompt.values():
        if node["class_type"] in ("WanExpressSampler", "EmptyHunyuanLatentVideo", "WanExpressVaceConditioning"):
            node["inputs"].update(width=WIDTH, height=HEIGHT, length=LENGTH)
        if node["class_type"] == "WanExpressSampler" and node["inputs"]["schedule"] != "distill":
            node["inputs"]["steps"] = min(node["inputs"]["steps"], MULTI_STEPS)
    return prompt


def node_of(prompt: dict, class_type: str) -> str:
    (key,) = [key for key, node in prompt.items() if node["class_type"] == class_type]
    return key


def saved_video(server, base: Path, prompt: dict, expected_fps: float):
    """Run the prompt; check it wrote one h264 mp4 under output/video/ with every frame; return its frames."""
    history = server.run_prompt(prompt)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000] + server.log()[-3000:]
    (entry,) = history["outputs"][node_of(prompt, "SaveVideo")]["images"]
    path = base / "output" / entry["subfolder"] / entry["filename"]
    assert entry["subfolder"] == "video" and path.suffix == ".mp4" and path.stat().st_size > 0
    frames, info = read_video(path)
    assert frames.shape[0] == LENGTH and info == {"codec": "h264", "fps": expected_fps}
    return frames


def test_the_workflow_files_are_what_build_py_writes():
    sys.path.insert(0, str(WORKFLOWS))
    try:
        import build
    finally:
        sys.path.remove(str(WORKFLOWS))
    built = build.workflows()
    assert sorted(built) == WORKFLOW_FILES
    for name, workflow in built.items():
        assert (WORKFLOWS / name).read_text() == build.dump(workflow), f"{name}: run python workflows/build.py"


@pytest.mark.parametrize("workflow", WORKFLOW_FILES)
def test_every_workflow_has_a_note_naming_its_files_and_a_video_workflow_ends_in_create_and_save_video(workflow):
    ui = json.loads((WORKFLOWS / workflow).read_text())
    assert ui["version"] == 0.4
    nodes = {node["id"]: node for node in ui["nodes"]}
    (note,) = [node for node in nodes.values() if node["type"] == "MarkdownNote"]
    text = note["widgets_values"][0]
    for node in nodes.values():
        for value in node["widgets_values"]:
            if isinstance(value, str) and value.endswith((".safetensors", ".json", "/")) and node["type"] != "SaveVideo":
                assert value.rstrip("/") in text, f"{workflow}: the note does not name {value}"
    boxes = [(n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in nodes.values()]  # the title bar (30 px) sits above pos
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], f"{workflow}: {a} overlaps {b}"
    if workflow in CONVERT_FILES:
        return
    (save,) = [node for node in nodes.values() if node["type"] == "SaveVideo"]
    (create,) = [node for node in nodes.values() if node["type"] == "CreateVideo"]
    links = {link[0]: link for link in ui["links"]}
    assert links[save["inputs"][0]["link"]][1] == create["id"]
    assert save["widgets_values"][1:] == ["mp4", "h264"]
    assert create["widgets_values"] == [24.0 if "ti2v" in workflow else 16.0]


@pytest.mark.parametrize("workflow", VIDEO_FILES)
def test_every_workflow_runs_on_tiny_models_of_the_files_it_names_and_saves_an_mp4(comfyui, workflow):
    server, base, object_info = comfyui
    saved_video(server, base, api_prompt(object_info, workflow), 24.0 if "ti2v" in workflow else 16.0)


@pytest.mark.parametrize("workflow", CONVERT_FILES)
def test_the_export_workflow_writes_a_model_file_that_the_dit_loader_then_runs(comfyui, workflow):
    server, base, object_info = comfyui
    prompt = api_prompt(object_info, workflow)
    history = server.run_prompt(prompt)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000] + server.log()[-3000:]
    name = prompt[node_of(prompt, "WanExpressConvert")]["inputs"]["filename"] + ".safetensors"
    assert (base / "models" / "diffusion_models" / name).stat().st_size > 0
    video = api_prompt(server.get("/object_info"), "wan_express_t2v_14b_lightx2v_fp8.json")
    video[node_of(video, "WanExpressDiTLoader")]["inputs"]["model"] = name
    saved_video(server, base, video, 16.0)


@pytest.mark.parametrize("workflow,loras", [
    ("wan_express_t2v_4step.json", {"auto": T2V_LORA}),
    ("wan_express_wan22_i2v_a14b_4step.json", {"high": I2V_LORAS["high"], "low": I2V_LORAS["low"]}),
])
def test_the_loader_merges_the_distill_loras_the_workflow_names_into_their_experts(comfyui, workflow, loras):
    server, base, object_info = comfyui
    prompt = api_prompt(object_info, workflow)
    loader = prompt[node_of(prompt, "WanExpressDiTLoader")]["inputs"]
    chosen = {loader[f"{slot}_expert"]: loader[slot] for slot in ("lora", "lora_2") if loader[slot] != NO_LORA}
    assert chosen == loras and all(loader[f"{slot}_strength"] == 1.0 for slot in ("lora", "lora_2"))
    start = len(server.log())
    with_loras = saved_video(server, base, prompt, 16.0)
    log = server.log()[start:]
    for expert, name in loras.items():
        assert f"LoRA models/loras/{name}: strength 1, " in log, log[-3000:]
        if expert != "auto":
            assert f"LoRA {name} -> {expert}-noise expert (chosen)" in log, log[-3000:]
    loader.update(lora=NO_LORA, lora_2=NO_LORA)
    without = saved_video(server, base, prompt, 16.0)
    assert np.abs(with_loras.astype(int) - without.astype(int)).max() > 8


def cached_nodes(history: dict) -> list[str]:
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    return [node for event, data in history["status"]["messages"] if event == "execution_cached"
            for node in data["nodes"]]


def test_dit_loader_reloads_when_its_lora_file_changes_on_disk(comfyui):
    server, base, object_info = comfyui
    prompt = api_prompt(object_info, "wan_express_t2v_4step.json")
    loader_id = node_of(prompt, "WanExpressDiTLoader")
    server.run_prompt(prompt)
    assert loader_id in cached_nodes(server.run_prompt(prompt))  # IS_CHANGED is stable while nothing changes
    lora = base / "models" / "loras" / T2V_LORA
    stat = lora.stat()
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert loader_id not in cached_nodes(server.run_prompt(prompt))


def test_the_websocket_shows_the_samplers_progress_and_a_preview_per_step(comfyui):
    server, _, object_info = comfyui
    prompt = api_prompt(object_info, "wan_express_tiny_cpu.json")
    sampler = node_of(prompt, "WanExpressSampler")
    prompt[sampler]["inputs"]["seed"] = 101  # not run before: the sampler executes
    client = new_client_id()
    socket = server.websocket(client)
    try:
        prompt_id = server.queue(prompt, client)
        messages = socket.until_done(prompt_id)
    finally:
        socket.close()
    progress = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "progress"
                and m["data"]["node"] == sampler]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(p["prompt_id"] == prompt_id for p in progress)
    # binary frames: 4-byte event type (1 = preview image), 4-byte image type (1 = JPEG), the JPEG
    previews = [m for m in messages if isinstance(m, bytes)]
    assert len(previews) == 4
    assert all(m[:4] == b"\0\0\0\1" and m[4:8] == b"\0\0\0\1" and m[8:10] == b"\xff\xd8" for m in previews)
    executed = [m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "executed"]
    assert node_of(prompt, "SaveVideo") in executed


def run_saving_latent_and_frames(server, base: Path, prompt: dict, on_message=None):
    """Run ``prompt`` with a SaveLatent after the sampler and a SaveImage after the decode (lossless: core's h264
    mp4 of the same frames differs between runs, the encoder is not bit-reproducible), watching the websocket.
    Returns (history, messages, latent or None, frames or None)."""
    prompt = json.loads(json.dumps(prompt))
    prompt["latent"] = {"class_type": "SaveLatent", "inputs": {"samples": [node_of(prompt, "WanExpressSampler"), 0],
                                                               "filename_prefix": "latents/interrupt"}}
    prompt["frames"] = {"class_type": "SaveImage", "inputs": {"images": [node_of(prompt, "WanExpressVAEDecode"), 0],
                                                              "filename_prefix": "frames/interrupt"}}
    client = new_client_id()
    socket = server.websocket(client)
    try:
        prompt_id = server.queue(prompt, client)
        messages = socket.until_done(prompt_id, on_message=lambda m: on_message and on_message(m, socket))
    finally:
        socket.close()
    history = server.wait(prompt_id)
    if history["status"]["status_str"] != "success":
        return history, messages, None, None
    (latent,) = history["outputs"]["latent"]["latents"]
    tensor = load_file(str(base / "output" / latent["subfolder"] / latent["filename"]))["latent_tensor"]
    frames = np.stack([np.asarray(Image.open(base / "output" / image["subfolder"] / image["filename"]))
                       for image in history["outputs"]["frames"]["images"]])
    return history, messages, tensor, frames


def evict(server) -> None:
    """A prompt without the workflow's nodes: ComfyUI drops every cached output the new prompt does not use."""
    history = server.run_prompt({"1": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {
        "width": 16, "height": 16, "length": 1, "batch_size": 1}}, "2": {"class_type": "SaveLatent", "inputs": {
            "samples": ["1", 0], "filename_prefix": "latents/evict"}}})
    assert history["status"]["status_str"] == "success"


def interrupted_node(history: dict) -> str:
    (data,) = [data for event, data in history["status"]["messages"] if event == "execution_interrupted"]
    return data["node_id"]


STEPS = 12


@pytest.mark.parametrize("moment", ["sampling", "decoding"])
def test_an_interrupt_leaves_nothing_behind_the_next_run_equals_an_uninterrupted_one(comfyui, moment):
    server, base, object_info = comfyui
    # UniPC with CFG; on a CPU a step of the tiny model and its decode (bf16) take long enough (~0.1 s, ~1 s) for
    # the interrupt, sent on the websocket message that starts the moment, to land within it
    prompt = api_prompt(object_info, "wan_express_t2v_official_cfg.json")
    sampler, decode = node_of(prompt, "WanExpressSampler"), node_of(prompt, "WanExpressVAEDecode")
    prompt[sampler]["inputs"].update(seed=202 if moment == "sampling" else 303, steps=STEPS)
    history, _, reference_latent, reference_frames = run_saving_latent_and_frames(server, base, prompt)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    evict(server)

    def interrupt(message, socket):
        if not isinstance(message, dict):
            return
        data = message["data"]
        if moment == "sampling" and message["type"] == "progress" and data["node"] == sampler and data["value"] == 2:
            server.interrupt()
        if moment == "decoding" and message["type"] == "executing" and data.get("node") == decode:
            server.interrupt()

    history, messages, _, _ = run_saving_latent_and_frames(server, base, prompt, interrupt)
    assert history["status"]["status_str"] == "error" and not history["outputs"].get("frames")
    progress = [m["data"]["value"] for m in messages if isinstance(m, dict) and m["type"] == "progress"
                and m["data"]["node"] == sampler]
    if moment == "sampling":
        assert interrupted_node(history) == sampler and max(progress) < STEPS, progress
    else:
        # the decode stops at its next interrupt check, or the run stops before a node after it starts
        assert progress[-1] == STEPS
        assert interrupted_node(history) in (decode, node_of(prompt, "CreateVideo"), "frames")

    history, _, latent, frames = run_saving_latent_and_frames(server, base, prompt)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    assert torch.equal(latent, reference_latent) and np.array_equal(frames, reference_frames)
