"""`load_dit(..., loras=[...])`: LoRAs merged while the model is built, never into a built model.

Every case is compared bit for bit with the same file loaded without LoRAs and merged afterwards (`merge_loras`,
the reference path for float, quantized and per-expert merging), on tiny official folders and LightX2V files.
"""

import logging

import pytest
import torch
from safetensors.torch import save_file

from wan_express.errors import InvalidInputError
from wan_express.kernels.quantize import quantize_weight
from wan_express.kernels.quantized import QuantLinear, QuantScheme
from wan_express.loaders import load_dit, plan_dit
from wan_express.loaders.lora import LoraSpec, load_loras, merge_loras
from wan_express.synthetic import TINY_CONFIG, write_official_folder

from .loader_files import write_lightx2v
from .test_lora_apply import extractor_lora, float_model


def write_lora(path, seed, size=0.1, alpha=None):
    """A LightX2V-style LoRA (``diffusion_model.<module>.lora_up/lora_down`` + diff/diff_b/diff_m), rank 4, with
    an optional ``.alpha`` per pair as Lightning-style files carry."""
    tensors = extractor_lora(float_model(seed=seed), seed, size=size)
    if alpha is not None:
        for key in [k for k in tensors if k.endswith(".lora_up.weight")]:
            tensors[key.removesuffix(".lora_up.weight") + ".alpha"] = torch.tensor(float(alpha))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(path))
    return path


def merged_after(path, specs, **kwargs):
    model = load_dit(path, dtype=torch.float32, **kwargs)
    merge_loras(model, load_loras(specs))
    return model


def assert_same_weights(got, want):
    want_state = want.state_dict()
    assert got.state_dict().keys() == want_state.keys()
    for key, tensor in got.state_dict().items():
        assert torch.equal(tensor, want_state[key]), key


@pytest.fixture
def official_folder(tmp_path):
    folder = tmp_path / "Wan2.1-T2V-tiny"
    write_official_folder(folder, TINY_CONFIG, seed=3)
    return folder


def test_loras_merged_at_build_equal_build_then_merge_on_a_float_folder(official_folder, tmp_path):
    distill = write_lora(tmp_path / "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors", seed=11)
    style = write_lora(tmp_path / "style.safetensors", seed=12, alpha=8)
    specs = [LoraSpec(distill, 1.0), LoraSpec(style, -0.5, alpha=2.0)]
    got = load_dit(official_folder, loras=specs, dtype=torch.float32)
    assert_same_weights(got, merged_after(official_folder, specs))
    plain = load_dit(official_folder, dtype=torch.float32)
    assert not torch.equal(got.blocks[0].self_attn.q.weight, plain.blocks[0].self_attn.q.weight)
    assert not torch.equal(got.blocks[1].modulation, plain.blocks[1].modulation)  # diff_m applied too


def test_online_quantization_rounds_the_merged_weight_once(official_folder, tmp_path):
    lora = write_lora(tmp_path / "distill.safetensors", seed=13)
    specs = [LoraSpec(lora, 1.25)]
    got = load_dit(official_folder, quantization="fp8", loras=specs, dtype=torch.float32)
    want = merged_after(official_folder, specs)
    layer = got.blocks[1].ffn[0]
    assert isinstance(layer, QuantLinear) and layer.weight_scale.shape == (layer.out_features, 1)
    codes, scale = quantize_weight(want.blocks[1].ffn[0].weight, QuantScheme("fp8_e4m3"))
    assert torch.equal(layer.weight, codes) and torch.equal(layer.weight_scale, scale)
    assert torch.equal(got.blocks[1].ffn[0].bias, want.blocks[1].ffn[0].bias)


@pytest.mark.parametrize("codes", ["int8", "fp8"])
def test_a_quantized_file_is_dequantized_merged_and_requantized_per_channel(tmp_path, codes):
    weights = {k: v.to(torch.bfloat16) for k, v in float_model(seed=4).state_dict().items()}
    name = "int8" if codes == "int8" else "scaled_fp8_e4m3"
    path = write_lightx2v(tmp_path / f"wan2.1_t2v_14b_{name}_lightx2v_4step.safetensors", weights, codes)
    lora = write_lora(tmp_path / "style.safetensors", seed=14)
    specs = [LoraSpec(lora, 0.8)]
    got = load_dit(path, loras=specs, dtype=torch.float32)
    want = merged_after(path, specs)
    assert_same_weights(got, want)
    layer, plain = got.blocks[0].cross_attn.k, load_dit(path, dtype=torch.float32).blocks[0].cross_attn.k
    assert isinstance(layer, QuantLinear) and layer.weight_scale.shape == (layer.out_features, 1)
    assert not torch.equal(layer.weight_scale, plain.weight_scale)  # fresh scales, not the file's


def test_a14b_pair_routes_each_lora_to_its_expert(tmp_path, caplog):
    folder = tmp_path / "Wan2.2-T2V-A14B-tiny"
    write_official_folder(folder / "high_noise_model", TINY_CONFIG, seed=1)
    write_official_folder(folder / "low_noise_model", TINY_CONFIG, seed=2)
    high = write_lora(tmp_path / "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors", seed=21)
    low = write_lora(tmp_path / "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors", seed=22)
    chosen = write_lora(tmp_path / "motion.safetensors", seed=23)
    both = write_lora(tmp_path / "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors", seed=24, size=0.05)
    specs = [LoraSpec(high), LoraSpec(low, 0.9), LoraSpec(chosen, 0.5, expert="low"), LoraSpec(both, 2.0)]
    caplog.set_level(logging.INFO, logger="wan_express.loaders.lora.spec")
    got_high, got_low = load_dit(folder, loras=specs, dtype=torch.float32)
    want_high = merged_after(folder / "high_noise_model", [specs[0], specs[3]])
    want_low = merged_after(folder / "low_noise_model", [specs[1], specs[2], specs[3]])
    assert_same_weights(got_high, want_high)
    assert_same_weights(got_low, want_low)
    lines = [r.getMessage() for r in caplog.records if r.name == "wan_express.loaders.lora.spec"]
    assert f"LoRA {high.name} -> high-noise expert (file name token 'high_noise')" in lines
    assert "LoRA motion.safetensors -> low-noise expert (chosen)" in lines
    assert f"LoRA {both.name} -> both experts (no high/low token in the file name)" in lines


def test_expert_both_overrides_the_file_name_on_a_pair_and_is_plain_on_a_single_model(tmp_path):
    folder = tmp_path / "Wan2.2-T2V-A14B-tiny"
    write_official_folder(folder / "high_noise_model", TINY_CONFIG, seed=1)
    write_official_folder(folder / "low_noise_model", TINY_CONFIG, seed=2)
    lora = write_lora(tmp_path / "wan22_lightning_high_noise.safetensors", seed=25)
    plan = plan_dit(folder, loras=[LoraSpec(lora, 0.7, expert="both")])
    assert [len(specs) for specs in plan.loras] == [1, 1] and lora in plan.files
    assert [len(specs) for specs in plan_dit(folder, loras=[LoraSpec(lora, 0.7)]).loras] == [1, 0]
    assert plan_dit(folder / "low_noise_model", loras=[LoraSpec(lora, expert="both")]).loras[0][0].path == lora
    got_high, got_low = load_dit(folder, loras=[LoraSpec(lora, 0.7, expert="both")], dtype=torch.float32)
    assert_same_weights(got_low, merged_after(folder / "low_noise_model", [LoraSpec(lora, 0.7)]))
    auto_low = load_dit(folder, loras=[LoraSpec(lora, 0.7)], dtype=torch.float32)[1]
    assert_same_weights(auto_low, load_dit(folder / "low_noise_model", dtype=torch.float32))


def test_an_unknown_expert_is_refused_before_anything_loads(official_folder, tmp_path):
    lora = write_lora(tmp_path / "style.safetensors", seed=26)
    with pytest.raises(InvalidInputError, match="expert 'middle'"):
        load_dit(official_folder, loras=[LoraSpec(lora, expert="middle")])
