"""``convert``: offline merge + export to LightX2V bf16/FP8/INT8 and ComfyUI scaled-FP8 single files.

Exported tensors are compared bit for bit with the online `merge_loras` of the same LoRAs rounded the way each
layout stores them (bf16, or `quantize_weight` for FP8/INT8), and the
reloaded files run within the spec budgets of the online merge (networks.md §1.8: bf16 relative L2 <= 2e-2,
W8A8 relative L2 <= 5e-2).
"""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from wan_express.errors import InvalidInputError
from wan_express.kernels.quantize import quantize_weight
from wan_express.kernels.quantized import QuantLinear, QuantScheme
from wan_express.loaders.dit.loader import load_dit, open_dit
from wan_express.loaders.dit.quant_targets import is_quantization_target
from wan_express.loaders.export import convert
from wan_express.loaders.export.writer import write_dit
from wan_express.loaders.inspector import inspect
from wan_express.loaders.lora import LoraSpec, load_loras, merge_loras
from wan_express.loaders.lora.merge import LoraPlan
from wan_express.synthetic import TINY_CONFIG, write_official_folder

from .test_lora_apply import extractor_lora, float_model, inputs, l2_error

BF16_TOL, QUANT_TOL = 2e-2, 5e-2
SCHEMES = {"lightx2v-fp8": QuantScheme("fp8_e4m3"), "lightx2v-int8": QuantScheme("int8")}


@pytest.fixture(scope="module")
def base_and_loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    folder = root / "Wan2.1-T2V-tiny"
    write_official_folder(folder, TINY_CONFIG, seed=3)
    shaped = float_model(seed=3)
    first, second = root / "distill_lora_rank4.safetensors", root / "style_lora.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in extractor_lora(shaped, seed=21).items()}, str(first))
    kohya = {}
    for key, value in extractor_lora(shaped, seed=22, size=0.05, prefix="").items():
        if key.endswith("lora_up.weight"):
            module = key.removesuffix(".lora_up.weight").replace(".", "_")
            kohya[f"lora_unet_{module}.lora_up.weight"] = value
            kohya[f"lora_unet_{module}.alpha"] = torch.tensor(2.0)
        elif key.endswith("lora_down.weight"):
            kohya[f"lora_unet_{key.removesuffix('.lora_down.weight').replace('.', '_')}.lora_down.weight"] = value
    save_file(kohya, str(second))
    return folder, [LoraSpec(first, 0.9), LoraSpec(second, -0.5)]


def run_convert(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    return convert.run(parser.parse_args(list(argv)))


def lora_args(specs):
    return [arg for spec in specs for arg in ("--lora", f"{spec.path}:{spec.strength}")]


def online_float_merge(folder: Path, specs):
    """The same LoRAs merged online into the fp32 model (`merge_loras`, not the export's lazy merge): its
    tensors, and the model."""
    model = load_dit(folder, dtype=torch.float32)
    merge_loras(model, load_loras(specs))
    return model.state_dict(), model


@torch.no_grad()
def velocity(model):
    return model(**inputs(TINY_CONFIG))


def read_file(path: Path):
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


def test_bf16_export_is_the_online_merge_rounded_to_bf16(base_and_loras, tmp_path):
    folder, specs = base_and_loras
    out = tmp_path / "merged_lightx2v_4step.safetensors"
    assert run_convert("--base", str(folder), *lora_args(specs), "--to", "lightx2v-bf16", str(out)) == 0
    tensors, metadata = read_file(out)
    view, online = online_float_merge(folder, specs)
    assert tensors.keys() == set(view)
    for key in view:
        assert tensors[key].dtype == torch.bfloat16 and torch.equal(tensors[key], view[key].to(torch.bfloat16)), key
    assert metadata["wan_express.source"] == folder.name and metadata["wan_express.layout"] == "lightx2v-bf16"
    assert metadata["wan_express.scheme"] == "bf16"
    assert json.loads(metadata["wan_express.loras"]) == [
        {"file": specs[0].path.name, "strength": 0.9, "alpha": None},
        {"file": specs[1].path.name, "strength": -0.5, "alpha": None}]
    error = l2_error(velocity(load_dit(out, dtype=torch.float32)), velocity(online))
    assert error <= BF16_TOL, error


@pytest.mark.parametrize("layout", sorted(SCHEMES))
def test_quantized_export_reloads_with_the_online_merge_outputs(base_and_loras, tmp_path, layout):
    folder, specs = base_and_loras
    scheme = SCHEMES[layout]
    out = tmp_path / f"merged_{layout}.safetensors"
    assert run_convert("--base", str(folder), *lora_args(specs), "--to", layout, str(out)) == 0
    tensors, metadata = read_file(out)
    view, online = online_float_merge(folder, specs)
    targets = [key for key in view if is_quantization_target(key, tuple(view[key].shape))]
    assert len(targets) == 2 * 10
    for key in view:
        if key in targets:
            codes, scale = quantize_weight(view[key], scheme)
            scale_key = key.removesuffix(".weight") + ".weight_scale"
            assert tensors[key].dtype == scheme.dtype and torch.equal(tensors[key], codes), key
            assert tensors[scale_key].shape == (codes.shape[0], 1) and torch.equal(tensors[scale_key], scale)
        else:
            assert torch.equal(tensors[key], view[key].to(torch.bfloat16)), key
    assert len(tensors) == len(view) + len(targets)
    assert metadata["wan_express.scheme"] == f"{scheme.codes}/channel"

    reloaded = load_dit(out, dtype=torch.float32)
    assert isinstance(reloaded.blocks[0].ffn[0], QuantLinear)
    assert reloaded.blocks[0].ffn[0].weight_scale.shape == (TINY_CONFIG.ffn_dim, 1)
    want = velocity(online)
    online_quantized = load_dit(folder, quantization=scheme.codes.split("_")[0], dtype=torch.float32)
    merge_loras(online_quantized, load_loras(specs))
    export_error, online_error = l2_error(velocity(reloaded), want), l2_error(velocity(online_quantized), want)
    assert export_error <= QUANT_TOL and online_error <= QUANT_TOL, (export_error, online_error)


def test_comfy_fp8_export_has_the_scaled_fp8_layout(base_and_loras, tmp_path):
    folder, specs = base_and_loras
    out = tmp_path / "merged_scaled_fp8_e4m3_lightx2v_4step_comfyui.safetensors"
    assert run_convert("--base", str(folder), *lora_args(specs), "--to", "comfy-fp8", str(out)) == 0
    tensors, metadata = read_file(out)
    view, online = online_float_merge(folder, specs)
    marker = tensors.pop("scaled_fp8")
    assert marker.dtype == torch.float8_e4m3fn and marker.shape == (2,) and not marker.float().any()
    assert not any(key.endswith("weight_scale") or key.startswith("model.") for key in tensors)
    scaled = 0
    for key in view:
        if is_quantization_target(key, tuple(view[key].shape)):
            scale = tensors[key.removesuffix(".weight") + ".scale_weight"]
            assert scale.shape == () and scale.dtype == torch.float32
            assert torch.allclose(scale, view[key].abs().max() / 448, rtol=1e-6, atol=0)
            assert tensors[key].dtype == torch.float8_e4m3fn
            dequantized = tensors[key].float() * scale
            assert l2_error(dequantized, view[key]) <= 0.05
            scaled += 1
        else:
            assert tensors[key].dtype == torch.bfloat16, key
    assert scaled == 2 * 10 and len(tensors) == len(view) + scaled
    assert metadata["wan_express.scheme"] == "fp8_e4m3/tensor"
    reloaded = load_dit(out, dtype=torch.float32)
    assert reloaded.blocks[1].self_attn.q.weight_scale.shape == (1, 1)
    error = l2_error(velocity(reloaded), velocity(online))
    assert error <= QUANT_TOL, error


def test_a_quantized_base_converts_through_its_dequantized_weights(base_and_loras, tmp_path):
    folder, specs = base_and_loras
    int8 = tmp_path / "base_int8.safetensors"
    assert run_convert("--base", str(folder), "--to", "lightx2v-int8", str(int8)) == 0
    out = tmp_path / "from_int8.safetensors"
    assert run_convert("--base", str(int8), *lora_args(specs[:1]), "--to", "lightx2v-bf16", str(out)) == 0
    tensors, _ = read_file(out)
    base, _ = read_file(int8)
    plan = LoraPlan(load_loras(specs[:1]), open_dit(int8).tensors.shapes())
    key = "blocks.1.cross_attn.v.weight"
    want = (base[key].float() * base["blocks.1.cross_attn.v.weight_scale"] + plan.delta(key)).to(torch.bfloat16)
    assert torch.equal(tensors[key], want) and "blocks.1.cross_attn.v.weight_scale" not in tensors


class _Interrupted(dict):
    """Tensors whose fifth read is interrupted, like Ctrl-C in the middle of an export."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        if self.reads == 5:
            raise KeyboardInterrupt
        return super().__getitem__(key)


def test_an_interrupted_export_leaves_no_half_file(tmp_path):
    tensors = {key: value for key, value in float_model().state_dict().items()}
    out = tmp_path / "out.safetensors"
    with pytest.raises(KeyboardInterrupt):
        write_dit(out, _Interrupted(tensors), "lightx2v-fp8", {})
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"previous export")
    with pytest.raises(KeyboardInterrupt):
        write_dit(out, _Interrupted(tensors), "comfy-fp8", {})
    assert list(tmp_path.iterdir()) == [out] and out.read_bytes() == b"previous export"
    write_dit(out, tensors, "lightx2v-int8", {"source": "test"})
    assert read_file(out)[1]["wan_express.source"] == "test"


def test_lora_arguments_take_an_optional_strength():
    assert convert.parse_lora_argument("a/b.safetensors:0.5") == LoraSpec(Path("a/b.safetensors"), 0.5)
    assert convert.parse_lora_argument("a/b.safetensors:-1.5").strength == -1.5
    assert convert.parse_lora_argument("a/b.safetensors") == LoraSpec(Path("a/b.safetensors"), 1.0)
    assert convert.parse_lora_argument("C:\\loras\\x.safetensors") == LoraSpec(Path("C:\\loras\\x.safetensors"))
    assert convert.parse_lora_argument("C:\\loras\\x.safetensors:3") == LoraSpec(Path("C:\\loras\\x.safetensors"), 3.0)
    assert convert.parse_lora_argument("a/b.safetensors:0.5:8") == LoraSpec(Path("a/b.safetensors"), 0.5, 8.0)
    assert convert.parse_lora_argument("C:\\x.safetensors:-1:16") == LoraSpec(Path("C:\\x.safetensors"), -1.0, 16.0)
    assert convert.parse_lora_argument("a:b.safetensors:2:4:8") == LoraSpec(Path("a:b.safetensors:2"), 4.0, 8.0)


def test_a_user_alpha_is_merged_and_the_export_metadata_reads_back(base_and_loras, tmp_path):
    folder, specs = base_and_loras
    out = tmp_path / "merged_alpha_fp8.safetensors"
    with_alpha = [specs[0], LoraSpec(specs[1].path, -0.5, 8.0)]
    argv = ["--lora", f"{specs[0].path}:0.9", "--lora", f"{specs[1].path}:-0.5:8"]
    assert run_convert("--base", str(folder), *argv, "--to", "lightx2v-bf16", str(out)) == 0
    tensors, _ = read_file(out)
    view, _ = online_float_merge(folder, with_alpha)
    file_alpha, _ = online_float_merge(folder, specs)
    key = "blocks.0.self_attn.q.weight"  # the kohya LoRA's scale is 8/4 instead of its file alpha 2/4
    assert torch.equal(tensors[key], view[key].to(torch.bfloat16))
    assert not torch.equal(tensors[key], file_alpha[key].to(torch.bfloat16))

    want = {"source": folder.name, "layout": "lightx2v-bf16", "scheme": "bf16",
            "loras": [{"file": specs[0].path.name, "strength": 0.9, "alpha": None},
                      {"file": specs[1].path.name, "strength": -0.5, "alpha": 8.0}]}
    assert open_dit(out).details["export"] == want
    report = inspect(out)
    assert report["models"][0]["export"] == want
    assert (f"{out.name}: exported by Wan Express (lightx2v-bf16, bf16) from {folder.name}; LoRAs merged: "
            f"{specs[0].path.name} x0.9, {specs[1].path.name} x-0.5") in report["hints"]
    assert open_dit(folder).details["export"] is None and inspect(folder)["models"][0]["export"] is None


def test_the_output_must_be_a_safetensors_file(base_and_loras, tmp_path):
    folder, _ = base_and_loras
    with pytest.raises(InvalidInputError, match="must be a .safetensors file"):
        run_convert("--base", str(folder), "--to", "lightx2v-bf16", str(tmp_path / "out.pth"))
