"""Inside the real ComfyUI's model manager, clones of one cached Wan model with different LoRAs (the pack's LoRA
node, modulation deltas included) and another quantization of the same files never change each other.

Runs alternate A, B, A, Q, A, C (C built while B's patches are in the shared network), A, C' (the same LoRA node
again, built while A is loaded), B: every A equals the first, C equals C', B its first run, bit for bit. Runs only
when COMFYUI_DIR points at a ComfyUI checkout (COMFYUI_PYTHON: its interpreter), on CPU, in a temporary base
directory, with ComfyUI's own modules (`load_models_gpu` is what every core sampler calls).
"""

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from wan_express.models import WanConfig
from wan_express.synthetic import write_official_folder

from .comfyui_server import COMFYUI_DIR, COMFYUI_PYTHON, PACK_ROOT, requires_comfyui
from .test_lora_apply import extractor_lora, float_model

pytestmark = requires_comfyui

# ComfyUI's Wan detection hard-codes text_dim 4096 and 128-wide heads; everything else tiny.
TINY = WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096)

ISOLATION_SCRIPT = r"""
import json, sys
import torch
from comfy.cli_args import args
args.cpu = not torch.cuda.is_available()
args.base_directory = sys.argv[1]
import comfy.model_management as mm

from wan_express.loaders import load_planned, plan_dit
from wan_express.nodes.lora_node import WanExpressLoRA
from wan_express.nodes.native import NativeOps, NativeWanDiT, core_model

folder, lora_b, lora_c = sys.argv[2:5]
torch.manual_seed(0)
dev = mm.get_torch_device()
x = torch.randn(1, 16, 2, 4, 6).to(dev)
context = (torch.randn(1, 512, 4096) * 0.1).to(dev)
sigma = torch.tensor([0.6]).to(dev)


def build(quantization):
    return core_model(load_planned(plan_dit(folder, quantization=quantization), dtype=torch.float32,
                                   device=mm.unet_offload_device(), ops_factory=NativeOps, model_class=NativeWanDiT))


def run(patcher):
    mm.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model.apply_model(x, sigma, c_crossattn=context).cpu()


def lora(patcher, name, strength):
    return WanExpressLoRA().apply(patcher, name, strength, "auto")["result"][0]


base = build("auto")
outputs = {"A": [run(base)]}
with_b = lora(base, lora_b, 1.0)
outputs["B"] = [run(with_b)]
outputs["A"].append(run(base))
outputs["Q"] = [run(build("fp8"))]
outputs["A"].append(run(base))
run(with_b)  # B's patches are in the shared network when the next LoRA node runs
outputs["C"] = [run(lora(base, lora_c, 0.7))]
outputs["A"].append(run(base))
outputs["C"].append(run(lora(base, lora_c, 0.7)))
outputs["B"].append(run(with_b))
outputs["A"].append(run(base))
first = outputs["A"][0]
print(json.dumps({
    "a_identical": [bool(torch.equal(out, first)) for out in outputs["A"][1:]],
    "b_identical": bool(torch.equal(outputs["B"][1], outputs["B"][0])),
    "c_identical": bool(torch.equal(outputs["C"][1], outputs["C"][0])),
    "c_max_difference": (outputs["C"][1] - outputs["C"][0]).abs().max().item(),
    "variants_differ": {name: not bool(torch.equal(outputs[name][0], first)) for name in "BQC"},
}))
"""


@pytest.fixture(scope="module")
def isolation_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    folder = root / "Wan2.1-T2V-tiny"
    write_official_folder(folder, TINY, seed=3)
    loras = root / "base" / "models" / "loras"
    loras.mkdir(parents=True)
    (root / "base" / "custom_nodes").mkdir()
    for name, seed in (("b.safetensors", 6), ("c.safetensors", 7)):  # LightX2V key style, modulation deltas too
        tensors = extractor_lora(float_model(TINY, seed=3), seed=seed, size=0.3)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(loras / name))
    importable = root / "importable"
    importable.mkdir()
    (importable / "wan_express").symlink_to(PACK_ROOT, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=str(importable), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([COMFYUI_PYTHON, "-c", ISOLATION_SCRIPT, str(root / "base"), str(folder), "b.safetensors",
                             "c.safetensors"], cwd=COMFYUI_DIR, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_variant_runs_as_built_whatever_ran_before(isolation_report):
    assert all(isolation_report["variants_differ"].values()), isolation_report
    assert all(isolation_report["a_identical"]), isolation_report
    assert isolation_report["b_identical"], isolation_report
    assert isolation_report["c_identical"], isolation_report
