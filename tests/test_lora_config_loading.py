"""LightX2V configs with ``lora_configs``: `load_dit(config.json)` merges them at load, routed to each expert.

The loaded weights are compared bit for bit with the same files loaded without LoRAs and merged afterwards
(`merge_loras`), with each expert's list, strength and alpha as LightX2V's ``name`` / ``strength`` / ``alpha`` say.
"""

import json

import torch
from safetensors.torch import save_file

from wan_express.kernels.quantize import quantize_weight
from wan_express.kernels.quantized import QuantLinear, QuantScheme
from wan_express.loaders.dit.loader import load_dit
from wan_express.loaders.lora import LoraSpec, load_loras, merge_loras

from .test_lora_apply import extractor_lora, float_model


def write_model(path, seed):
    model = float_model(seed=seed)
    save_file({key: tensor.contiguous() for key, tensor in model.state_dict().items()}, str(path))
    return model


def write_lora(path, model, seed, **kwargs):
    save_file({k: v.contiguous() for k, v in extractor_lora(model, seed, **kwargs).items()}, str(path))


def assert_same_weights(got, want):
    want_state = want.state_dict()
    for key, tensor in got.state_dict().items():
        assert torch.equal(tensor, want_state[key]), key


def merged_after_load(path, specs):
    model = load_dit(path, dtype=torch.float32)
    merge_loras(model, load_loras(specs))
    return model


def test_a14b_config_loras_are_merged_into_their_experts(tmp_path):
    high, low = write_model(tmp_path / "high.safetensors", 1), write_model(tmp_path / "low.safetensors", 2)
    write_lora(tmp_path / "distill_a.safetensors", high, seed=11)
    write_lora(tmp_path / "wan22_lightning_low_noise.safetensors", low, seed=12, prefix="")
    write_lora(tmp_path / "wan21_style.safetensors", high, seed=13, size=0.05)
    config = tmp_path / "wan_moe_distill.json"
    config.write_text(json.dumps({
        "high_noise_original_ckpt": "high.safetensors", "low_noise_original_ckpt": "low.safetensors",
        "lora_configs": [
            {"path": "distill_a.safetensors", "strength": 0.7, "name": "high_noise_model"},
            {"path": "wan22_lightning_low_noise.safetensors", "alpha": 8},
            {"path": "wan21_style.safetensors", "strength": -1.5},
        ]}))
    got_high, got_low = load_dit(config, dtype=torch.float32)
    want_high = merged_after_load(tmp_path / "high.safetensors", [
        LoraSpec(tmp_path / "distill_a.safetensors", 0.7), LoraSpec(tmp_path / "wan21_style.safetensors", -1.5)])
    want_low = merged_after_load(tmp_path / "low.safetensors", [
        LoraSpec(tmp_path / "wan22_lightning_low_noise.safetensors", 1.0, 8.0),
        LoraSpec(tmp_path / "wan21_style.safetensors", -1.5)])
    assert_same_weights(got_high, want_high)
    assert_same_weights(got_low, want_low)
    plain_high = load_dit(tmp_path / "high.safetensors", dtype=torch.float32)
    assert not torch.equal(got_high.blocks[0].ffn[0].weight, plain_high.blocks[0].ffn[0].weight)


def test_config_loras_merge_before_quantization_so_each_layer_is_rounded_once(tmp_path):
    model = write_model(tmp_path / "wan_t2v.safetensors", 3)
    write_lora(tmp_path / "distill.safetensors", model, seed=14)
    config = tmp_path / "wan_t2v_fp8.json"
    config.write_text(json.dumps({
        "dit_quantized": True, "dit_quant_scheme": "fp8-sgl", "dit_quantized_ckpt": "wan_t2v.safetensors",
        "lora_configs": [{"path": "distill.safetensors", "strength": 1.25, "alpha": 2}]}))
    got = load_dit(config, dtype=torch.float32)
    want = merged_after_load(tmp_path / "wan_t2v.safetensors",
                             [LoraSpec(tmp_path / "distill.safetensors", 1.25, 2.0)])
    layer = got.blocks[1].cross_attn.o
    assert isinstance(layer, QuantLinear) and layer.weight_scale.shape == (layer.out_features, 1)
    codes, scale = quantize_weight(want.blocks[1].cross_attn.o.weight, QuantScheme("fp8_e4m3"))
    assert torch.equal(layer.weight, codes) and torch.equal(layer.weight_scale, scale)
    assert torch.equal(got.blocks[1].cross_attn.o.bias, want.blocks[1].cross_attn.o.bias)
    assert torch.equal(got.head.modulation, want.head.modulation)
