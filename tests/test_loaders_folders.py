"""Folder rules (one model picked, several never merged), LightX2V config JSONs, and the inspect report / CLI."""

import json
from pathlib import Path

import pytest
import torch

from wan_express.errors import MissingComponentError, ModelFormatError, UnsupportedModelError
from wan_express.expert_names import EXPERTS
from wan_express.kernels.quantized import QuantLinear
from wan_express.loaders import inspector
from wan_express.loaders.dit.folders import PAIR_FOLDERS, role_from_name
from wan_express.loaders.dit.lightx2v_config import LORA_EXPERTS, read_lightx2v_config
from wan_express.loaders.dit.loader import load_dit, open_dit, open_dit_pair
from wan_express.loaders.inspector import inspect
from wan_express.loaders.lora.spec import LoraSpec, expert_of
from wan_express.nodes.dit_loader_node import LORA_EXPERTS as NODE_LORA_EXPERTS
from wan_express.sampling.experts import HIGH_NOISE, LOW_NOISE

from .loader_files import save, tiny_weights, write_lightx2v, write_official, write_split


@pytest.fixture(scope="module")
def weights():
    return tiny_weights(seed=5)


def test_one_model_file_in_a_folder_is_picked(weights, tmp_path):
    write_lightx2v(tmp_path / "wan2.1_t2v_lightx2v_4step.safetensors", weights)
    save({"blocks.0.self_attn.q.lora_down.weight": torch.ones(2, 2)}, tmp_path / "some_lora.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"dim": 256}))
    assert open_dit(tmp_path).path.name == "wan2.1_t2v_lightx2v_4step.safetensors"


def test_several_models_are_never_merged_and_the_choices_are_listed(weights, tmp_path):
    write_lightx2v(tmp_path / "wan_lightx2v.safetensors", weights)
    write_lightx2v(tmp_path / "wan_scaled_fp8_e4m3_lightx2v.safetensors", weights, "fp8")
    write_lightx2v(tmp_path / "wan_int8_lightx2v.safetensors", weights, "int8")
    with pytest.raises(ModelFormatError) as error:
        load_dit(tmp_path)
    message = str(error.value)
    assert "holds 3 DiT models" in message and "never merged" in message
    for choice in ("wan_lightx2v.safetensors (bfloat16)", "wan_scaled_fp8_e4m3_lightx2v.safetensors "
                   "(float8_e4m3fn, scaled)", "wan_int8_lightx2v.safetensors (int8, scaled)"):
        assert choice in message
    model = load_dit(tmp_path, file="wan_int8_lightx2v.safetensors")
    assert model.blocks[0].ffn[0].weight.dtype == torch.int8
    with pytest.raises(MissingComponentError, match="'nope.safetensors' not found; models here: wan_int8"):
        load_dit(tmp_path, file="nope.safetensors")
    report = inspect(tmp_path)
    assert report["kind"] == "choices" and len(report["models"]) == 3


def test_wan22_expert_folders_with_single_files(weights, tmp_path):
    write_lightx2v(tmp_path / "high_noise_model" / "wan2.2_i2v_A14b_high_noise_lightx2v_4step.safetensors", weights)
    write_lightx2v(tmp_path / "high_noise_model" / "wan2.2_i2v_A14b_high_noise_int8_lightx2v_4step.safetensors",
                   weights, "int8")
    write_lightx2v(tmp_path / "low_noise_model" / "wan2.2_i2v_A14b_low_noise_lightx2v_4step.safetensors", weights)
    with pytest.raises(ModelFormatError, match="high_noise_model holds 2 DiT models"):
        open_dit_pair(tmp_path)
    high, low = open_dit_pair(tmp_path, high_file="wan2.2_i2v_A14b_high_noise_int8_lightx2v_4step.safetensors")
    assert (high.role, low.role) == ("high", "low") and high.layers and not low.layers
    high_model, _ = load_dit(tmp_path, file=("wan2.2_i2v_A14b_high_noise_int8_lightx2v_4step.safetensors", None))
    assert isinstance(high_model.blocks[0].self_attn.q, QuantLinear)


def test_role_comes_from_the_file_name(weights, tmp_path):
    path = write_lightx2v(tmp_path / "wan2.2_t2v_low_noise_14B_fp16.safetensors", weights)
    assert open_dit(path).role == "low"
    assert inspect(path)["models"][0]["family"] == "Wan2.2"


@pytest.mark.parametrize("name, expert", [
    ("wan2.2_t2v_high_noise_14B_fp16.safetensors", "high"),
    ("wan2.2_i2v_A14b_low_noise_int8_lightx2v_4step.safetensors", "low"),
    ("Wan22-HighNoise-style.safetensors", "high"),
    ("Wan2_2-I2V-A14B-LOW_fp8_e4m3fn_scaled_KJ.safetensors", "low"),
    ("Wan2.2-T2V-A14B-4steps-lora_HIGH_fp16.safetensors", "high"),
    ("low_noise_model", "low"),
    ("highres_fix_lowrank.safetensors", None),
    ("wan2.1_t2v_14B_highnoisefree.safetensors", None),
    ("high_noise_and_low_noise_mix.safetensors", None),
    ("high_noise_LOW.safetensors", "high"),  # the more specific token decides
    ("wan2.1_t2v_14B_fp16.safetensors", None),
])
def test_dit_roles_and_lora_routing_read_an_expert_from_a_name_by_one_rule(name, expert):
    assert role_from_name(Path("models") / name) == expert
    assert expert_of(LoraSpec(Path("loras") / name))[0] == expert


def test_a_dit_role_falls_back_to_its_folder_name():
    assert role_from_name(Path("high_noise_model") / "diffusion_pytorch_model.safetensors") == "high"
    assert role_from_name(Path("Wan2.2-A14B-LOW") / "high_noise_and_low_noise.safetensors") == "low"
    assert role_from_name(Path("wan_highres") / "model.safetensors") is None


def test_expert_names_have_one_home():
    assert EXPERTS == ("high", "low") and (HIGH_NOISE, LOW_NOISE) == (0, 1)
    assert PAIR_FOLDERS[0] == ("high_noise_model", "low_noise_model")
    assert LORA_EXPERTS == {"high_noise_model": "high", "low_noise_model": "low"}
    assert NODE_LORA_EXPERTS == ("auto", "high", "low", "both")


def test_split_folder_with_a_missing_block_is_named(weights, tmp_path):
    folder = write_split(tmp_path / "m_split", weights, with_index=False)
    (folder / "block_0.safetensors").unlink()
    with pytest.raises(ModelFormatError, match=r"not block_0 \.\.\. block_N without gaps \(found \[1\]\)"):
        open_dit(folder)


def test_gguf_is_refused_by_name(tmp_path):
    path = tmp_path / "wan-Q4_K_M.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(UnsupportedModelError, match="GGUF files are not supported"):
        open_dit(path)


def test_lightx2v_config_selects_files_quantization_and_sampling(weights, tmp_path):
    write_lightx2v(tmp_path / "models" / "wan_lightx2v.safetensors", weights)
    write_lightx2v(tmp_path / "models" / "wan_scaled_fp8_e4m3_lightx2v.safetensors", weights, "fp8")
    config_path = tmp_path / "wan_i2v_distill.json"
    config_path.write_text(json.dumps({
        "model_path": "models", "dit_quantized": True, "dit_quant_scheme": "fp8-sgl",
        "dit_quantized_ckpt": "models/wan_scaled_fp8_e4m3_lightx2v.safetensors",
        "dit_original_ckpt": "models/wan_lightx2v.safetensors",
        "denoising_step_list": [1000, 750, 500, 250], "sample_shift": 5.0, "sample_guide_scale": 1.0,
        "lora_configs": [{"path": "loras/x.safetensors", "strength": 0.5, "name": "high_noise_model"}],
        "infer_steps": 4, "self_attn_1_type": "flash_attn3"}))
    config = read_lightx2v_config(config_path)
    assert config.quantization == "fp8" and config.quant_scheme == "fp8-sgl"
    assert config.sampling == {"denoising_step_list": [1000, 750, 500, 250], "sample_shift": 5.0,
                               "sample_guide_scale": 1.0}
    assert config.unknown_keys == ["infer_steps", "self_attn_1_type"]
    assert config.loras[0].expert == "high" and config.loras[0].strength == 0.5
    assert open_dit(config_path).path.name == "wan_scaled_fp8_e4m3_lightx2v.safetensors"
    with pytest.raises(MissingComponentError, match=r"x\.safetensors: LoRA file not found"):
        load_dit(config_path)
    out_features, in_features = weights["blocks.0.self_attn.q.weight"].shape
    save({"blocks.0.self_attn.q.lora_up.weight": torch.ones(out_features, 2),
          "blocks.0.self_attn.q.lora_down.weight": torch.ones(2, in_features)}, tmp_path / "loras" / "x.safetensors")
    model = load_dit(config_path)
    assert model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    plain = load_dit(tmp_path / "models" / "wan_scaled_fp8_e4m3_lightx2v.safetensors")
    assert not torch.equal(model.blocks[0].self_attn.q.weight_scale, plain.blocks[0].self_attn.q.weight_scale)
    assert torch.equal(model.blocks[0].self_attn.k.weight, plain.blocks[0].self_attn.k.weight)
    # the same config with dit_quantized false takes the original checkpoint; int8 scheme quantizes it online
    config_path.write_text(json.dumps({"dit_original_ckpt": "models/wan_lightx2v.safetensors"}))
    assert open_dit(config_path).path.name == "wan_lightx2v.safetensors"
    config_path.write_text(json.dumps({"dit_quantized": True, "dit_quant_scheme": "int8-q8f",
                                       "dit_quantized_ckpt": "models/wan_lightx2v.safetensors"}))
    assert load_dit(config_path).blocks[0].ffn[2].weight.dtype == torch.int8


def test_lightx2v_config_on_a_legacy_tree_takes_the_quantized_subfolder(weights, tmp_path):
    tree = tmp_path / "Wan2.1-I2V-14B-480P-StepDistill-CfgDistill-Lightx2v"
    write_official(tree / "original", weights)
    write_lightx2v(tree / "fp8" / "wan_scaled_fp8_e4m3.safetensors", weights, "fp8")
    write_lightx2v(tree / "distill_int8" / "wan_int8.safetensors", weights, "int8")
    config_path = tmp_path / "legacy.json"
    for scheme, folder in (("fp8-vllm", "fp8"), ("int8-q8f", "distill_int8")):
        config_path.write_text(json.dumps({"model_path": tree.name, "dit_quantized": True,
                                           "dit_quant_scheme": scheme}))
        assert open_dit(config_path).path.parent.name == folder


def test_lightx2v_config_expert_checkpoints_give_a_pair(weights, tmp_path):
    write_lightx2v(tmp_path / "h.safetensors", weights, "int8")
    write_lightx2v(tmp_path / "l.safetensors", weights, "int8")
    config_path = tmp_path / "moe.json"
    config_path.write_text(json.dumps({"dit_quantized": True, "dit_quant_scheme": "int8-vllm",
                                       "high_noise_quantized_ckpt": "h.safetensors",
                                       "low_noise_quantized_ckpt": "l.safetensors", "boundary_step_index": 2}))
    high, low = open_dit_pair(config_path)
    assert (high.role, low.role) == ("high", "low")
    assert read_lightx2v_config(config_path).sampling == {"boundary_step_index": 2}


@pytest.mark.parametrize("content,error,expected", [
    ({"dit_quantized": True, "dit_quantized_ckpt": "x"}, ModelFormatError, "dit_quant_scheme is missing"),
    ({"dit_quantized": True, "dit_quant_scheme": "nvfp4"}, UnsupportedModelError,
     "dit_quant_scheme 'nvfp4' is not supported"),
    ({"high_noise_original_ckpt": "h.safetensors"}, MissingComponentError,
     "high_noise_original_ckpt names a file that is not there"),
    ({"lora_configs": [{"strength": 1}]}, ModelFormatError, r"lora_configs\[0\] needs a 'path'"),
    ({"dim": 5120}, ModelFormatError, "not a LightX2V config"),
])
def test_bad_lightx2v_configs_are_named(content, error, expected, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(content))
    with pytest.raises(error, match=expected):
        read_lightx2v_config(path)


def test_inspect_reports_a_quantized_file_and_the_folder_components(weights, tmp_path):
    write_official(tmp_path / "official", weights)
    (tmp_path / "official" / "Wan2.1_VAE.pth").write_bytes(b"")
    report = inspect(tmp_path / "official")
    json.dumps(report)
    model = report["models"][0]
    assert model["layout"] == "official_folder" and model["variant"] == "t2v"
    assert report["components"]["vae"].endswith("Wan2.1_VAE.pth")
    assert report["components"]["missing"] == ["umT5-XXL text encoder", "umT5 tokenizer"]
    path = write_lightx2v(tmp_path / "wan2.1_t2v_scaled_fp8_e4m3_lightx2v.safetensors", weights, "fp8")
    model = inspect(path)["models"][0]
    assert model["precision"] == "fp8_e4m3/channel x20; other tensors bfloat16"
    assert model["quantization"]["quant_format"] == "lightx2v_fp8" and model["family"] == "Wan2.1"


def test_inspect_cli_prints_json(weights, tmp_path, capsys):
    import argparse
    path = write_lightx2v(tmp_path / "m.safetensors", weights, "int8")
    parser = argparse.ArgumentParser()
    inspector.add_arguments(parser)
    assert inspector.run(parser.parse_args([str(path)])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"][0]["quantization"]["quant_format"] == "lightx2v_int8"
