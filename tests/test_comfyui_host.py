"""The pack in a real ComfyUI: every node appears in /object_info with no import failure, and ComfyUI core's own
diffusion-model loader reads our comfy-fp8 export as a scaled-FP8 Wan model.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (COMFYUI_PYTHON: its interpreter, default the current one).
ComfyUI starts headless on CPU with a temporary --base-directory whose custom_nodes/ links to this repository
under an unrelated folder name, so the checkout itself is never modified.
"""

import argparse
import json
import subprocess

import pytest
from safetensors.torch import save_file

from wan_express import NODE_CLASS_MAPPINGS
from wan_express.loaders.dit.loader import open_dit
from wan_express.loaders.export import convert
from wan_express.loaders.lora.merge import LoraPlan, MergedTensors
from wan_express.loaders.lora.spec import load_loras
from wan_express.loaders.quantization import dequantized
from wan_express.models import WanConfig
from wan_express.synthetic import write_official_folder

from .comfyui_server import COMFYUI_DIR, COMFYUI_PYTHON, requires_comfyui, running_comfyui
from .test_lora_apply import extractor_lora, float_model


pytestmark = requires_comfyui


def test_every_node_is_registered_in_a_running_comfyui(tmp_path):
    with running_comfyui(tmp_path / "base") as server:
        object_info = server.get("/object_info")
        log_text = server.log()
    missing = [node for node in NODE_CLASS_MAPPINGS if node not in object_info]
    assert not missing, f"nodes missing from /object_info: {missing}\n{log_text[-3000:]}"
    assert "IMPORT FAILED" not in log_text and "Cannot import" not in log_text, log_text[-3000:]
    for node in NODE_CLASS_MAPPINGS:
        assert object_info[node]["category"].startswith("Wan Express")


# Run by COMFYUI_PYTHON in COMFYUI_DIR: load a diffusion model with ComfyUI's loader and compare named layers'
# dequantized weights with reference fp32 weights. argv: model file, reference file, layer names.
COMFY_LOAD_SCRIPT = """
import json, sys
import torch
from safetensors.torch import load_file
from comfy.cli_args import args
args.cpu = True
import comfy.sd

patcher = comfy.sd.load_diffusion_model(sys.argv[1])
model, reference = patcher.model, load_file(sys.argv[2])
report = {"model_class": type(model).__name__, "diffusion_model": type(model.diffusion_model).__module__,
          "model_type": model.model_config.unet_config.get("model_type"),
          "dim": model.model_config.unet_config.get("dim"), "scaled_fp8": str(model.model_config.scaled_fp8),
          "fp8_matmul": model.model_config.optimizations.get("fp8"), "layers": {}}
for name in sys.argv[3:]:
    layer = model.diffusion_model.get_submodule(name)
    weight = layer.weight.float() * layer.scale_weight.float()
    want = reference[name + ".weight"]
    report["layers"][name] = {"operation": type(layer).__qualname__, "weight_dtype": str(layer.weight.dtype),
                              "scale": layer.scale_weight.item(), "max_abs_diff": (weight - want).abs().max().item(),
                              "max_abs_weight": want.abs().max().item(),
                              "fp8_bound_violations": int(((weight - want).abs() > want.abs() / 16
                                                            + layer.scale_weight.float() / 1024 + 1e-12).sum())}
print(json.dumps(report))
"""

# ComfyUI hard-codes text_dim 4096 (umT5) and 128-wide heads for Wan; everything else tiny.
COMFY_TINY = WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096)
COMPARED_LAYERS = ("blocks.0.self_attn.q", "blocks.1.ffn.2", "blocks.1.cross_attn.o")


def test_comfyui_core_loads_the_comfy_fp8_export_as_scaled_fp8(tmp_path):
    folder = tmp_path / "Wan2.1-T2V-tiny"
    write_official_folder(folder, COMFY_TINY, seed=3)
    lora = tmp_path / "distill_lora.safetensors"
    save_file({k: v.contiguous() for k, v in extractor_lora(float_model(COMFY_TINY, seed=3), seed=5).items()},
              str(lora))
    out = tmp_path / "wan_tiny_scaled_fp8_e4m3_comfyui.safetensors"
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    args = parser.parse_args(["--base", str(folder), "--lora", f"{lora}:0.8", "--to", "comfy-fp8", str(out)])
    assert convert.run(args) == 0
    source = open_dit(folder)
    loras = load_loras([args.lora[0]])
    merged = MergedTensors(dequantized(source.tensors, source.layers), LoraPlan(loras, source.tensors.shapes()))
    reference = tmp_path / "merged_reference.safetensors"
    save_file({f"{name}.weight": merged[f"{name}.weight"].contiguous() for name in COMPARED_LAYERS}, str(reference))

    python = COMFYUI_PYTHON
    result = subprocess.run([python, "-c", COMFY_LOAD_SCRIPT, str(out), str(reference), *COMPARED_LAYERS],
                            cwd=COMFYUI_DIR, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model_class"] == "WAN21" and report["diffusion_model"] == "comfy.ldm.wan.model"
    assert report["model_type"] == "t2v" and report["dim"] == COMFY_TINY.dim
    # the 2-element marker: scaled FP8 weights, dequantized before a bf16 matmul (no FP8 matmul)
    assert report["scaled_fp8"] == "torch.float8_e4m3fn" and report["fp8_matmul"] is False
    for name, layer in report["layers"].items():
        assert layer["operation"] == "scaled_fp8_ops.<locals>.scaled_fp8_op.Linear", name
        assert layer["weight_dtype"] == "torch.float8_e4m3fn", name
        assert layer["scale"] == pytest.approx(layer["max_abs_weight"] / 448, rel=1e-6), name
        # within FP8 E4M3 rounding of the merged weight: half a unit of 3 mantissa bits, or of the subnormal step
        assert layer["fp8_bound_violations"] == 0, (name, layer)
        assert layer["max_abs_diff"] <= layer["max_abs_weight"] / 16, (name, layer)
