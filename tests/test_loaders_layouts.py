"""Every DiT layout loads to the same model: official, LightX2V, ComfyUI, diffusers, split folders, quantized files.

Float layouts must give bit-identical outputs; FP8/INT8 files must stay within the spec's quantization error of the
bf16 model (networks.md §1.8: relative L2 <= 5e-2) and reach the model as untouched codes + fp32 scales.
"""

import json

import pytest
import torch

from wan_express.errors import ModelFormatError, UnsupportedModelError
from wan_express.kernels.quantized import QuantLinear, QuantScheme
from wan_express.loaders.dit.loader import load_dit, open_dit, open_dit_pair
from wan_express.loaders.inspector import inspect
from wan_express.models import WanConfig
from wan_express.synthetic import TINY_CONFIG

from .loader_files import (per_channel, per_tensor_fp8, save, tiny_weights, write_comfy_quant,
                           write_diffusers, write_lightx2v, write_official, write_scaled_fp8, write_split)

REL_L2_QUANT = 5e-2


@pytest.fixture(scope="module")
def weights():
    return tiny_weights(seed=7)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(11)
    return (torch.randn(1, 16, 2, 4, 6, generator=generator), torch.tensor([640.0]),
            torch.randn(1, 7, TINY_CONFIG.text_dim, generator=generator))


@pytest.fixture(scope="module")
def reference(weights, inputs, tmp_path_factory):
    folder = write_official(tmp_path_factory.mktemp("ref") / "Wan2.1-T2V-tiny", weights)
    with torch.no_grad():
        return load_dit(folder)(*inputs)


def relative_l2(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).norm() / expected.norm()).item()


def run(path, inputs, **kwargs):
    model = load_dit(path, **kwargs)
    with torch.no_grad():
        return model(*inputs), model


FLOAT_LAYOUTS = {
    "lightx2v_bf16_file": lambda d, w: write_lightx2v(d / "wan2.1_t2v_14b_lightx2v_4step.safetensors", w),
    "comfyui_prefixed_file": lambda d, w: save({"model.diffusion_model." + k: v for k, v in w.items()},
                                               d / "wan2.1_t2v_14B_bf16.safetensors"),
    "diffusion_model_prefixed_file": lambda d, w: save({"diffusion_model." + k: v for k, v in w.items()},
                                                       d / "model.safetensors"),
    "diffusers_folder": lambda d, w: write_diffusers(d / "transformer", w),
    "split_folder_with_index": lambda d, w: write_split(d / "model_split", w),
    "split_folder_without_index": lambda d, w: write_split(d / "model_split", w, with_index=False),
    "pth_distill_model": lambda d, w: (torch.save({"state_dict": w}, d / "distill_model.pt"),
                                       d / "distill_model.pt")[1],
}
EXPECTED_LAYOUT = {
    "lightx2v_bf16_file": "lightx2v_file", "comfyui_prefixed_file": "comfyui_file",
    "diffusion_model_prefixed_file": "comfyui_file", "diffusers_folder": "diffusers_folder",
    "split_folder_with_index": "lightx2v_split_folder", "split_folder_without_index": "lightx2v_split_folder",
    "pth_distill_model": "pth_file",
}


@pytest.mark.parametrize("layout", FLOAT_LAYOUTS)
def test_float_layouts_give_bit_identical_outputs(layout, weights, inputs, reference, tmp_path):
    path = FLOAT_LAYOUTS[layout](tmp_path, weights)
    got, model = run(path, inputs)
    assert torch.equal(got, reference)
    assert open_dit(path).layout == EXPECTED_LAYOUT[layout]
    assert model.config == TINY_CONFIG


@pytest.mark.parametrize("codes,non_linear", [("fp8", torch.bfloat16), ("int8", torch.float32)])
def test_lightx2v_quantized_file_reaches_the_model_as_codes_and_channel_scales(codes, non_linear, weights, inputs,
                                                                               reference, tmp_path):
    path = write_lightx2v(tmp_path / f"wan_{codes}_lightx2v_4step.safetensors", weights, codes, non_linear)
    source = open_dit(path)
    dtype = torch.float8_e4m3fn if codes == "fp8" else torch.int8
    scheme = QuantScheme("fp8_e4m3" if codes == "fp8" else "int8", "channel")
    assert len(source.layers) == 2 * 10 and set(source.layers.values()) == {scheme}  # 4+4 attn + 2 ffn per block
    expected_codes, expected_scale = per_channel(weights["blocks.1.ffn.0.weight"], codes)
    assert source.tensors["blocks.1.ffn.0.weight"].dtype == dtype
    assert torch.equal(source.tensors["blocks.1.ffn.0.weight"].view(torch.uint8), expected_codes.view(torch.uint8))
    scale = source.tensors["blocks.1.ffn.0.weight_scale"]
    assert scale.dtype == torch.float32 and scale.shape == (TINY_CONFIG.ffn_dim, 1)
    assert torch.equal(scale, expected_scale)
    got, model = run(path, inputs)
    layer = model.blocks[1].ffn[0]
    assert isinstance(layer, QuantLinear) and layer.weight.dtype == dtype
    assert torch.equal(layer.weight.view(torch.uint8), expected_codes.view(torch.uint8))
    assert not isinstance(model.head.head, QuantLinear)  # embeddings and head stay float
    error = relative_l2(got, reference)
    assert error <= REL_L2_QUANT, error


@pytest.mark.parametrize("prefix,elements,marker_dtype", [("", 2, torch.float8_e4m3fn),
                                                          ("model.diffusion_model.", 1, torch.float32)])
def test_scaled_fp8_files_load_per_tensor(prefix, elements, marker_dtype, weights, inputs, reference, tmp_path):
    path = write_scaled_fp8(tmp_path / "wan_scaled_fp8_e4m3_lightx2v_4step_comfyui.safetensors", weights, prefix,
                            elements, marker_dtype)
    source = open_dit(path)
    assert set(source.layers.values()) == {QuantScheme("fp8_e4m3", "tensor")}
    assert source.details["quantization"]["marker"]["elements"] == elements
    assert source.tensors["blocks.0.self_attn.q.weight_scale"].shape == (1, 1)
    assert "scaled_fp8" not in source.tensors
    assert source.layout == "comfyui_file"
    got, _ = run(path, inputs)
    error = relative_l2(got, reference)
    assert error <= REL_L2_QUANT, error


def test_fully_cast_fp8_file_runs_its_weights_with_scale_one(weights, inputs, tmp_path):
    """LightX2V ``--comfyui_mode --full_quantized``: every tensor fp8, no scales, no marker (spec formats.md §4.4)."""
    cast = {key: tensor.to(torch.float8_e4m3fn) for key, tensor in weights.items()}
    path = save(cast, tmp_path / "wan_full_fp8.safetensors")
    source = open_dit(path)
    assert set(source.layers.values()) == {QuantScheme("fp8_e4m3", "tensor")}
    assert torch.equal(source.tensors["blocks.0.self_attn.q.weight_scale"], torch.ones(1, 1))
    assert source.tensors["blocks.0.norm3.weight"].dtype == torch.float32  # narrow floats are widened
    got, _ = run(path, inputs)
    # the same fp8-rounded values as plain float weights: the scale-1 layers must compute exactly that model
    rounded = write_lightx2v(tmp_path / "rounded.safetensors", {k: v.float() for k, v in cast.items()})
    expected, _ = run(rounded, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("encoding", ["tensor", "metadata"])
def test_comfy_quant_layers_are_decided_per_layer(encoding, weights, inputs, reference, tmp_path):
    path = write_comfy_quant(tmp_path / "wan_mixed.safetensors", weights, encoding, prefix="model.diffusion_model.")
    source = open_dit(path)
    assert source.layers["blocks.0.self_attn.q"] == QuantScheme("fp8_e4m3", "tensor")
    assert source.layers["blocks.0.ffn.2"] == QuantScheme("int8", "channel")
    assert "blocks.0.cross_attn.q" not in source.layers
    assert not any(k.endswith(("comfy_quant", "input_scale")) for k in source.tensors)
    assert source.details["quantization"]["comfy_formats"] == {"float8_e4m3fn": 8, "int8_tensorwise": 4}
    got, _ = run(path, inputs)
    error = relative_l2(got, reference)
    assert error <= REL_L2_QUANT, error


def test_bf16_on_a_quantized_file_dequantizes_on_purpose(weights, inputs, tmp_path):
    path = write_lightx2v(tmp_path / "wan_int8_lightx2v.safetensors", weights, "int8")
    codes, scale = per_channel(weights["blocks.0.self_attn.k.weight"], "int8")
    _, model = run(path, inputs, quantization="bf16")
    layer = model.blocks[0].self_attn.k
    assert not isinstance(layer, QuantLinear) and layer.weight.dtype == torch.bfloat16
    assert torch.equal(layer.weight, (codes.float() * scale).to(torch.bfloat16))


@pytest.mark.parametrize("codes", ["fp8", "int8"])
def test_online_quantization_of_a_float_model(codes, weights, inputs, reference, tmp_path):
    folder = write_official(tmp_path / "official", weights)
    got, model = run(folder, inputs, quantization=codes)
    expected_codes, expected_scale = per_channel(weights["blocks.1.cross_attn.o.weight"].float(), codes)
    layer = model.blocks[1].cross_attn.o
    assert isinstance(layer, QuantLinear) and layer.scheme.granularity == "channel"
    assert torch.equal(layer.weight.view(torch.uint8), expected_codes.view(torch.uint8))
    assert torch.equal(layer.weight_scale, expected_scale)
    assert not isinstance(model.text_embedding[0], QuantLinear)
    error = relative_l2(got, reference)
    assert error <= REL_L2_QUANT, error


def test_asking_for_the_codes_a_file_already_has_keeps_them(weights, tmp_path):
    path = write_scaled_fp8(tmp_path / "wan_comfyui.safetensors", weights)
    _, model = run(path, (torch.randn(1, 16, 1, 2, 2), torch.tensor([1.0]), torch.randn(1, 3, 64)),
                   quantization="fp8")
    codes, _ = per_tensor_fp8(weights["blocks.0.self_attn.v.weight"])
    assert model.blocks[0].self_attn.v.scheme == QuantScheme("fp8_e4m3", "tensor")
    assert torch.equal(model.blocks[0].self_attn.v.weight.view(torch.uint8), codes.view(torch.uint8))


def test_wan22_a14b_folder_gives_a_high_low_pair(tmp_path):
    folder = tmp_path / "Wan2.2-I2V-A14B"
    config = WanConfig("i2v", 36, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)
    high_weights, low_weights = tiny_weights(config, seed=1), tiny_weights(config, seed=2)
    write_official(folder / "high_noise_model", high_weights, config)
    write_official(folder / "low_noise_model", low_weights, config)
    (folder / "configuration.json").write_text(json.dumps({"framework": "Pytorch"}))
    with pytest.raises(ModelFormatError, match="two experts.*open_dit_pair"):
        open_dit(folder)
    high, low = open_dit_pair(folder)
    assert (high.role, low.role) == ("high", "low") and high.config == config and not config.clip_branch
    high_model, low_model = load_dit(folder, dtype=torch.float32)
    assert torch.equal(high_model.state_dict()["head.modulation"], high_weights["head.modulation"].float())
    assert torch.equal(low_model.state_dict()["head.modulation"], low_weights["head.modulation"].float())
    report = inspect(folder)
    assert report["kind"] == "dit_pair" and [m["role"] for m in report["models"]] == ["high", "low"]
    assert {m["family"] for m in report["models"]} == {"Wan2.2"}


def test_ti2v_folder_without_config_json_is_inferred(tmp_path):
    config = WanConfig("ti2v", 48, 48, dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)
    folder = write_official(tmp_path / "Wan2.2-TI2V-5B", tiny_weights(config, seed=3), config)
    (folder / "config.json").unlink()
    source = open_dit(folder)
    assert source.config == config and source.details["config_origin"] == "inferred from tensors"
    assert inspect(folder)["models"][0]["family"] == "Wan2.2"


def test_config_json_conflicts_lose_to_the_tensors(weights, tmp_path, caplog):
    folder = write_official(tmp_path / "official", weights)
    (folder / "config.json").write_text(json.dumps({**TINY_CONFIG.to_json(), "dim": 5120, "eps": 1e-5}))
    source = open_dit(folder)
    assert source.config.dim == 256 and source.config.eps == 1e-5
    assert "dim 5120 (tensors: 256)" in caplog.text


def test_animate_is_recognised_and_refused(weights, tmp_path):
    path = save({**weights, "pose_patch_embedding.weight": torch.zeros((256, 16, 1, 2, 2), dtype=torch.bfloat16)},
                tmp_path / "special.safetensors")
    with pytest.raises(UnsupportedModelError, match="Animate.*not support yet"):
        load_dit(path)
    report = inspect(path)["models"][0]
    assert report["supported"] is False and "Animate" in report["model"]


def test_vace_config_without_vace_tensors_is_refused(weights, tmp_path):
    folder = write_official(tmp_path / "Wan2.1-VACE-1.3B", weights)
    (folder / "config.json").write_text(json.dumps({**TINY_CONFIG.to_json(), "_class_name": "VaceWanModel"}))
    with pytest.raises(ModelFormatError, match="VACE model but the weights hold no vace_"):
        open_dit(folder)
