"""Config inference from tensor shapes equals the official config of every released DiT."""

import pytest
import torch

from wan_express.errors import ModelFormatError, UnsupportedModelError, UnsupportedVariantError
from wan_express.models import RELEASED_CONFIGS, WanConfig, WanDiT, WanVaceDiT

# spec formats.md §2.3: keys and parameters per released model
RELEASED_COUNTS = {
    "Wan2.1-T2V-1.3B": (825, 1_418_996_800),
    "Wan2.1-T2V-14B": (1095, 14_288_491_584),
    "Wan2.1-I2V-14B": (1303, 16_394_878_784),
    "Wan2.1-FLF2V-14B": (1304, 16_395_536_704),
    "Wan2.2-T2V-A14B": (1095, 14_288_491_584),
    "Wan2.2-I2V-A14B": (1095, 14_288_901_184),
    "Wan2.2-TI2V-5B": (825, 4_999_787_712),
    "Wan2.1-VACE-1.3B": (1264, 2_153_972_032),
    "Wan2.1-VACE-14B": (1331, 17_337_592_896),
}

# the official config.json files (spec formats.md §3.2)
_BASE_JSON = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536, "eps": 1e-06,
              "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 12,
              "num_layers": 30, "out_dim": 16, "text_len": 512}
_14B = {"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40}
OFFICIAL_JSON = {
    "Wan2.1-T2V-1.3B": _BASE_JSON,
    "Wan2.1-T2V-14B": {**_BASE_JSON, **_14B},
    "Wan2.1-I2V-14B": {**_BASE_JSON, **_14B, "in_dim": 36, "model_type": "i2v"},
    "Wan2.1-FLF2V-14B": {**_BASE_JSON, **_14B, "in_dim": 36, "model_type": "flf2v"},
    "Wan2.2-T2V-A14B": {**_BASE_JSON, **_14B},
    "Wan2.2-I2V-A14B": {**_BASE_JSON, **_14B, "in_dim": 36, "model_type": "i2v"},
    "Wan2.2-TI2V-5B": {**_BASE_JSON, "_diffusers_version": "0.33.0", "dim": 3072, "ffn_dim": 14336, "in_dim": 48,
                       "out_dim": 48, "num_heads": 24, "num_layers": 30, "model_type": "ti2v"},
    "Wan2.1-VACE-1.3B": {**_BASE_JSON, "_class_name": "VaceWanModel", "model_type": "vace",
                         "vace_layers": list(range(0, 30, 2)), "vace_in_dim": 96},
    "Wan2.1-VACE-14B": {**_BASE_JSON, **_14B, "_class_name": "VaceWanModel", "model_type": "vace",
                        "vace_layers": [0, 5, 10, 15, 20, 25, 30, 35], "vace_in_dim": 96},
}


def meta_state_dict(config: WanConfig) -> dict:
    with torch.device("meta"):
        return (WanVaceDiT if config.is_vace else WanDiT)(config).state_dict()


@pytest.mark.parametrize("name", list(RELEASED_CONFIGS))
def test_config_inferred_from_shapes_equals_official(name):
    state_dict = meta_state_dict(RELEASED_CONFIGS[name])
    keys, params = RELEASED_COUNTS[name]
    assert len(state_dict) == keys
    assert sum(t.numel() for t in state_dict.values()) == params
    inferred = WanConfig.infer({k: t.shape for k, t in state_dict.items()})
    assert inferred == RELEASED_CONFIGS[name]
    from_json = WanConfig.from_json(OFFICIAL_JSON[name], clip_branch=inferred.clip_branch)
    assert from_json == inferred


def test_wan21_and_wan22_i2v_differ_only_by_the_clip_branch():
    wan21, wan22 = RELEASED_CONFIGS["Wan2.1-I2V-14B"], RELEASED_CONFIGS["Wan2.2-I2V-A14B"]
    assert wan21.model_type == wan22.model_type == "i2v"
    assert wan21.clip_branch and not wan22.clip_branch
    assert wan21.image_tokens == 257 and wan22.image_tokens == 0
    assert RELEASED_CONFIGS["Wan2.1-FLF2V-14B"].image_tokens == 514


def test_animate_is_recognised_and_refused_by_keys_and_class():
    shapes = {k: t.shape for k, t in meta_state_dict(RELEASED_CONFIGS["Wan2.1-T2V-1.3B"]).items()}
    shapes["pose_patch_embedding.weight"] = (1536, 16, 1, 2, 2)
    with pytest.raises(UnsupportedVariantError, match="Animate-14B") as raised:
        WanConfig.infer(shapes, source="animate.safetensors")
    assert (raised.value.variant, raised.value.model) == ("animate", "Wan2.2 Animate-14B")
    with pytest.raises(UnsupportedVariantError, match="Animate-14B"):
        WanConfig.from_json({**_BASE_JSON, "_class_name": "WanAnimateModel"})


def test_non_dit_tensors_are_named_in_the_error():
    with pytest.raises(ModelFormatError, match=r"lora\.safetensors: tensor 'patch_embedding.weight' is missing"):
        WanConfig.infer({"blocks.0.self_attn.q.lora_down.weight": (64, 5120)}, source="lora.safetensors")


def test_config_json_without_required_key_is_a_clear_error():
    broken = dict(_BASE_JSON)
    del broken["dim"]
    with pytest.raises(ModelFormatError, match=r"config\.json: required key 'dim' is missing"):
        WanConfig.from_json(broken)
