"""The shipped example workflows run in a real ComfyUI on tiny models and save frames.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (see tests/comfyui_server.py). Each workflow is converted
from its UI format to the API prompt the Run button sends, with the model choices pointed at tiny synthetic
folders in the official layouts and the size made small; everything else is the file as shipped.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from wan_express.demo import DEMO_CONFIG, write_model_folder, write_official_folder, write_text_encoder, \
    write_tokenizer, write_vae
from wan_express.loaders.components import TEXT_ENCODER_FILE
from wan_express.models import WanConfig

from .comfyui_server import running_comfyui, ui_to_api

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"

pytestmark = pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"),
                                reason="COMFYUI_DIR is not set (no ComfyUI checkout to test against)")


def write_a14b_i2v_folder(folder: Path) -> Path:
    """A tiny Wan2.2 I2V-A14B folder: two 36-channel experts without CLIP branch, umT5 and the Wan2.1 VAE on top."""
    config = WanConfig("i2v", 36, 16, clip_branch=False, dim=256, ffn_dim=512, num_heads=2, num_layers=1,
                       text_dim=DEMO_CONFIG.text_dim)
    write_official_folder(folder / "high_noise_model", config, seed=1)
    write_official_folder(folder / "low_noise_model", config, seed=2)
    tokenizer = write_tokenizer(folder)
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    write_text_encoder(folder / TEXT_ENCODER_FILE, len(vocab), config.text_dim)
    write_vae(folder / "Wan2.1_VAE.pth")
    return folder


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
    (base / "input").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    pixels = (torch.rand(72, 120, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    Image.fromarray(pixels.numpy()).save(base / "input" / "example.png")
    with running_comfyui(base) as server:
        yield server, base


@pytest.mark.parametrize("workflow,model_folder,prefix", [
    ("wan_express_t2v_4step.json", "Wan2.1-T2V-tiny/", "t2v"),
    ("wan_express_wan22_i2v_a14b_4step.json", "Wan2.2-I2V-A14B-tiny/", "i2v"),
])
def test_example_workflow_runs_and_saves_every_frame(comfyui, workflow, model_folder, prefix):
    server, base = comfyui
    ui = json.loads((WORKFLOWS / workflow).read_text())
    object_info = server.get("/object_info")
    prompt = small(ui_to_api(ui, object_info), model_folder)
    history = server.run_prompt(prompt)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000] + server.log()[-3000:]
    saved = [image for output in history["outputs"].values() for image in output.get("images", [])]
    assert len(saved) == 9
    assert all((base / "output" / image["subfolder"] / image["filename"]).is_file() for image in saved)
    assert all(image["subfolder"] == "wan_express" and image["filename"].startswith(prefix) for image in saved)
