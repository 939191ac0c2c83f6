"""Wan2.1 VACE in every layout (official folder, diffusers folder, ComfyUI file, LightX2V FP8 / INT8, online
quantization, a VACE module file on a T2V base) loads to the same model; `inspect` reports VACE and its layers.

Float layouts must equal the in-memory model built from the same (bf16-rounded) weights up to fp32 rounding
(rel. max err <= 1e-4); quantized ones within networks.md §1.8's relative L2 <= 5e-2.
"""

import json

import pytest
import torch

from wan_express.errors import ModelFormatError
from wan_express.loaders.dit.loader import load_dit
from wan_express.loaders.inspector import inspect
from wan_express.models import WanConfig, WanVaceDiT

from .loader_files import save, tiny_weights, write_lightx2v, write_official
from .test_vace_model import TINY_VACE, inputs, vace_to_diffusers

FLOAT_TOL, QUANT_TOL = 1e-4, 5e-2


@pytest.fixture(scope="module")
def weights():
    return tiny_weights(TINY_VACE, seed=5)


@pytest.fixture(scope="module")
def reference(weights):
    return velocity(WanVaceDiT.from_state_dict({k: v.float() for k, v in weights.items()}))


def velocity(model) -> torch.Tensor:
    x, vace, context = inputs(TINY_VACE)
    with torch.no_grad():
        return model(x, torch.tensor([900.0, 400.0]), context, vace, 0.8)


def rel_max(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


def rel_l2(got, expected):
    return ((got - expected).norm() / expected.norm()).item()


def check(name, model, reference, quantized=False):
    assert model.config.vace_layers == TINY_VACE.vace_layers and model.config.vace_in_dim == 96
    error = (rel_l2 if quantized else rel_max)(velocity(model), reference)
    assert error <= (QUANT_TOL if quantized else FLOAT_TOL), f"{name}: {error}"


def test_official_folder(weights, reference, tmp_path):
    folder = write_official(tmp_path / "Wan2.1-VACE-1.3B", weights, TINY_VACE)
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "VaceWanModel"
    check("official folder", load_dit(folder, dtype=torch.float32), reference)
    report = inspect(folder)["models"][0]
    assert report["variant"] == "vace" and report["config"]["vace_layers"] == [0, 2]
    assert report["family"] == "Wan2.1"


def test_config_json_vace_layers_win_over_the_default_spacing(weights, tmp_path):
    folder = write_official(tmp_path / "vace", weights, TINY_VACE)
    (folder / "config.json").write_text(json.dumps({**TINY_VACE.to_json(), "vace_layers": [0, 3]}))
    assert load_dit(folder, dtype=torch.float32).config.vace_layers == (0, 3)
    (folder / "config.json").write_text(json.dumps({**TINY_VACE.to_json(), "vace_layers": [0, 1, 3]}))
    with pytest.raises(ModelFormatError, match="vace_layers lists 3 blocks"):
        load_dit(folder)


def test_diffusers_folder(weights, reference, tmp_path):
    folder = tmp_path / "transformer"
    save({vace_to_diffusers(k): v for k, v in weights.items()}, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanVACETransformer3DModel", "num_layers": 4,
                                                    "vace_layers": [0, 2], "vace_in_channels": 96}))
    check("diffusers folder", load_dit(folder, dtype=torch.float32), reference)


def test_comfyui_repackaged_file(weights, reference, tmp_path):
    path = save({f"model.diffusion_model.{k}": v for k, v in weights.items()},
                tmp_path / "wan2.1_vace_1.3B_fp16.safetensors")
    check("ComfyUI file", load_dit(path, dtype=torch.float32), reference)
    assert inspect(path)["models"][0]["variant"] == "vace"


@pytest.mark.parametrize("codes", ["fp8", "int8"])
def test_lightx2v_quantized_file(codes, weights, reference, tmp_path):
    path = write_lightx2v(tmp_path / f"wan2.1_vace_{codes}_lightx2v.safetensors", weights, codes)
    model = load_dit(path, dtype=torch.float32)
    assert "vace_blocks.1.ffn.0" in model.ops.layers and "vace_blocks.0.before_proj" not in model.ops.layers
    check(f"LightX2V {codes}", model, reference, quantized=True)


@pytest.mark.parametrize("codes", ["fp8", "int8"])
def test_online_quantization(codes, weights, reference, tmp_path):
    folder = write_official(tmp_path / "vace", weights, TINY_VACE)
    check(f"online {codes}", load_dit(folder, quantization=codes, dtype=torch.float32), reference, quantized=True)


def split(weights):
    base = {k: v for k, v in weights.items() if not k.startswith("vace_")}
    return base, {k: v for k, v in weights.items() if k.startswith("vace_")}


def test_vace_module_on_a_t2v_base(weights, reference, tmp_path):
    base, module = split(weights)
    base_path = save(base, tmp_path / "wan2.1_t2v_1.3B.safetensors")
    module_path = save({f"diffusion_model.{k}": v for k, v in module.items()}, tmp_path / "vace_module.safetensors")
    check("module file", load_dit(base_path, dtype=torch.float32, vace_module=module_path), reference)


def test_vace_module_of_another_size_is_refused(weights, tmp_path):
    base, _ = split(weights)
    base_path = save(base, tmp_path / "t2v.safetensors")
    other = WanConfig("t2v", 16, 16, dim=128, ffn_dim=256, num_heads=1, num_layers=4, text_dim=64,
                      vace_layers=(0, 2), vace_in_dim=96)
    _, wrong = split(tiny_weights(other, seed=1))
    module_path = save(wrong, tmp_path / "vace_14B_module.safetensors")
    with pytest.raises(ModelFormatError, match="width 128.*width 256"):
        load_dit(base_path, vace_module=module_path)


def test_vace_module_with_base_tensors_is_refused(weights, tmp_path):
    base, _ = split(weights)
    base_path = save(base, tmp_path / "t2v.safetensors")
    full = save(weights, tmp_path / "full_vace.safetensors")
    with pytest.raises(ModelFormatError, match="not only vace_"):
        load_dit(base_path, vace_module=full)

