"""The shipped example workflows run in a real ComfyUI on tiny models and save frames.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (see tests/comfyui_server.py). Each workflow is converted
from its UI format to the API prompt the Run button sends, with the model choices pointed at tiny synthetic
folders in the official layouts and the size made small; everything else is the file as shipped, including the
LightX2V distill LoRA names, which exist in models/loras/ as tiny LoRAs in LightX2V's key style. Each workflow runs
a second time without its LoRAs, to show that the LoRAs reached the weights of the expert they name.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from wan_express.models import WanConfig
from wan_express.synthetic import TINY_CONFIG, write_components, write_model_folder, write_official_folder

from .comfyui_server import requires_comfyui, running_comfyui, ui_to_api
from .test_lora_apply import extractor_lora, float_model

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"

pytestmark = requires_comfyui


A14B_I2V = WanConfig("i2v", 36, 16, clip_branch=False, dim=256, ffn_dim=512, num_heads=2, num_layers=1,
                     text_dim=TINY_CONFIG.text_dim)
# The LightX2V distill LoRAs the workflows name (formats.md §4.7, §9.6), and the expert each must reach.
T2V_LORA = "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"
I2V_LORAS = {"high": "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors",
             "low": "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors"}
NO_LORA = "(none)"


def write_a14b_i2v_folder(folder: Path) -> Path:
    """A tiny Wan2.2 I2V-A14B folder: two 36-channel experts without CLIP branch, umT5 and the Wan2.1 VAE on top."""
    config = A14B_I2V
    write_official_folder(folder / "high_noise_model", config, seed=1)
    write_official_folder(folder / "low_noise_model", config, seed=2)
    return write_components(folder, config.text_dim)


def write_lightx2v_lora(path: Path, config: WanConfig, seed: int) -> Path:
    """A tiny distill LoRA for ``config`` in LightX2V's key style (``diffusion_model.<module>.lora_up/lora_down``,
    ``.diff`` / ``.diff_b`` / ``.diff_m``), bf16, with an ``.alpha`` per pair equal to the rank (scale 1)."""
    tensors = extractor_lora(float_model(config, seed=seed), seed, rank=4, size=0.5)
    for key in [k for k in tensors if k.endswith(".lora_up.weight")]:
        tensors[key.removesuffix(".lora_up.weight") + ".alpha"] = torch.tensor(4.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(path))
    return path


def small(prompt: dict, model_folder: str) -> dict:
    """Point every loader at `model_folder` and shrink the video to 96x64, 9 frames."""
    for node in prompt.values():
        if node["class_type"] in ("WanExpressDiTLoader", "WanExpressTextEncoderLoader", "WanExpressVAELoader"):
            node["inputs"]["model"] = model_folder
        if node["class_type"] == "WanExpressSampler":
            node["inputs"].update(width=96, height=64, length=9)
    return prompt


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    models = base / "models" / "wan_express"
    write_model_folder(models / "Wan2.1-T2V-tiny")
    write_a14b_i2v_folder(models / "Wan2.2-I2V-A14B-tiny")
    loras = base / "models" / "loras"
    write_lightx2v_lora(loras / T2V_LORA, TINY_CONFIG, seed=31)
    write_lightx2v_lora(loras / I2V_LORAS["high"], A14B_I2V, seed=32)
    write_lightx2v_lora(loras / I2V_LORAS["low"], A14B_I2V, seed=33)
    (base / "input").mkdir(parents=True, exist_ok=True)
    pixels = (torch.rand(72, 120, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    Image.fromarray(pixels.numpy()).save(base / "input" / "example.png")
    with running_comfyui(base) as server:
        yield server, base


def saved_frames(server, base: Path, prompt: dict, prefix: str) -> np.ndarray:
    """Run the prompt; check every frame was saved under wan_express/<prefix>; return them as [F, H, W, 3]."""
    history = server.run_prompt(prompt)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000] + server.log()[-3000:]
    saved = [image for output in history["outputs"].values() for image in output.get("images", [])]
    assert len(saved) == 9
    paths = [base / "output" / image["subfolder"] / image["filename"] for image in saved]
    assert all(image["subfolder"] == "wan_express" and image["filename"].startswith(prefix) for image in saved)
    return np.stack([np.asarray(Image.open(path)) for path in paths])


@pytest.mark.parametrize("workflow,model_folder,prefix,loras", [
    ("wan_express_t2v_4step.json", "Wan2.1-T2V-tiny/", "t2v", {"auto": T2V_LORA}),
    ("wan_express_wan22_i2v_a14b_4step.json", "Wan2.2-I2V-A14B-tiny/", "i2v", {"high": I2V_LORAS["high"],
                                                                               "low": I2V_LORAS["low"]}),
])
def test_example_workflow_runs_with_its_distill_loras_and_saves_every_frame(comfyui, workflow, model_folder, prefix,
                                                                            loras):
    server, base = comfyui
    ui = json.loads((WORKFLOWS / workflow).read_text())
    prompt = small(ui_to_api(ui, server.get("/object_info")), model_folder)
    (loader,) = [node["inputs"] for node in prompt.values() if node["class_type"] == "WanExpressDiTLoader"]
    chosen = {loader[f"{slot}_expert"]: loader[slot] for slot in ("lora", "lora_2") if loader[slot] != NO_LORA}
    assert chosen == loras and all(loader[f"{slot}_strength"] == 1.0 for slot in ("lora", "lora_2"))
    with_loras = saved_frames(server, base, prompt, prefix)
    log = server.log()
    for expert, name in loras.items():
        assert f"LoRA {name}: strength 1, " in log, log[-3000:]
        if expert != "auto":
            assert f"LoRA {name} -> {expert}-noise expert (chosen)" in log, log[-3000:]

    loader.update(lora=NO_LORA, lora_2=NO_LORA)
    for node in prompt.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"wan_express/{prefix}_without_lora"
    without = saved_frames(server, base, prompt, prefix)
    assert with_loras.shape == without.shape and with_loras.shape[0] == 9
    assert np.abs(with_loras.astype(int) - without.astype(int)).max() > 8


def cached_nodes(history: dict) -> list[str]:
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    return [node for event, data in history["status"]["messages"] if event == "execution_cached"
            for node in data["nodes"]]


def test_dit_loader_reloads_when_its_lora_file_changes_on_disk(comfyui):
    server, base = comfyui
    ui = json.loads((WORKFLOWS / "wan_express_t2v_4step.json").read_text())
    prompt = small(ui_to_api(ui, server.get("/object_info")), "Wan2.1-T2V-tiny/")
    (loader_id,) = [key for key, node in prompt.items() if node["class_type"] == "WanExpressDiTLoader"]
    server.run_prompt(prompt)
    assert loader_id in cached_nodes(server.run_prompt(prompt))  # IS_CHANGED is stable while nothing changes
    lora = base / "models" / "loras" / T2V_LORA
    stat = lora.stat()
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert loader_id not in cached_nodes(server.run_prompt(prompt))
