"""Loading a DiT from an official folder: shards through the index, config.json or inference, strict keys."""

import json

import pytest
import torch
from safetensors.torch import save_file

from wan_express.errors import InvalidInputError, MissingComponentError, ModelFormatError
from wan_express.loaders import load_dit
from wan_express.loaders.dit.loader import CONFIG_NAME, INDEX_NAME
from wan_express.models import WanConfig
from wan_express.synthetic import TINY_CONFIG, write_official_folder


@pytest.fixture
def official_folder(tmp_path):
    folder = tmp_path / "Wan2.1-T2V-tiny"
    tensors = write_official_folder(folder, TINY_CONFIG, seed=3)
    return folder, tensors


def test_official_folder_loads_every_tensor_exactly(official_folder):
    folder, tensors = official_folder
    model = load_dit(folder, dtype=torch.float32)
    assert model.config == TINY_CONFIG
    loaded = model.state_dict()
    assert loaded.keys() == tensors.keys()
    for key, tensor in tensors.items():
        assert torch.equal(loaded[key], tensor), key


def test_missing_config_json_is_inferred_from_tensors(official_folder):
    folder, _ = official_folder
    (folder / CONFIG_NAME).unlink()
    assert load_dit(folder, dtype=torch.float32).config == TINY_CONFIG


def test_shards_without_index_are_found_by_name_and_others_ignored(official_folder):
    folder, tensors = official_folder
    (folder / INDEX_NAME).unlink()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(folder / "some_lora.safetensors"))
    model = load_dit(folder, dtype=torch.float32)
    assert torch.equal(model.state_dict()["head.modulation"], tensors["head.modulation"])


def test_bf16_load_converts_matmul_weights_only(official_folder):
    folder, _ = official_folder
    model = load_dit(folder)
    assert model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert model.blocks[0].modulation.dtype == torch.float32
    with torch.no_grad():
        out = model(torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, TINY_CONFIG.text_dim))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_missing_and_unexpected_keys_are_listed_in_one_error(official_folder, tmp_path):
    _, tensors = official_folder
    tensors = dict(tensors)
    tensors["blocks.1.ffn.3.bias"] = tensors.pop("blocks.1.ffn.2.bias")
    file = tmp_path / "renamed.safetensors"
    save_file(tensors, str(file))
    with pytest.raises(ModelFormatError) as error:
        load_dit(file)
    message = str(error.value)
    assert "missing: blocks.1.ffn.2.bias" in message and "unexpected: blocks.1.ffn.3.bias" in message
    assert str(file) in message


def test_index_naming_a_tensor_its_shard_lacks_is_reported(official_folder):
    folder, _ = official_folder
    index = json.loads((folder / INDEX_NAME).read_text())
    index["weight_map"]["blocks.1.ffn.3.bias"] = index["weight_map"]["blocks.1.ffn.0.bias"]
    (folder / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match=r"the index puts 'blocks\.1\.ffn\.3\.bias' in diffusion_pytorch_model-"):
        load_dit(folder)


def test_wrong_shapes_are_reported(official_folder, tmp_path):
    _, tensors = official_folder
    tensors = dict(tensors)
    tensors["blocks.1.cross_attn.o.weight"] = torch.zeros(256, 128)
    file = tmp_path / "bad.safetensors"
    save_file(tensors, str(file))
    with pytest.raises(ModelFormatError, match=r"wrong shape: blocks\.1\.cross_attn\.o\.weight: file \(256, 128\)"):
        load_dit(file)


def test_empty_folder_names_what_was_expected(tmp_path):
    with pytest.raises(MissingComponentError, match="no DiT weights found"):
        load_dit(tmp_path)


def test_inputs_of_the_wrong_shape_get_clear_errors(official_folder):
    folder, _ = official_folder
    model = load_dit(folder, dtype=torch.float32)
    latent, context = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 5, TINY_CONFIG.text_dim)
    with pytest.raises(InvalidInputError, match="takes 16"):
        model(torch.randn(1, 36, 2, 4, 4), torch.tensor([1.0]), context)
    with pytest.raises(InvalidInputError, match="at most 512"):
        model(latent, torch.tensor([1.0]), torch.randn(1, 600, TINY_CONFIG.text_dim))
    with pytest.raises(InvalidInputError, match="no CLIP branch"):
        model(latent, torch.tensor([1.0]), context, clip_fea=torch.randn(1, 257, 1280))
    with pytest.raises(InvalidInputError, match="timestep"):
        model(latent, torch.tensor([1.0, 2.0, 3.0]), context)


def test_i2v_without_clip_features_is_refused():
    config = WanConfig("i2v", 36, 16, clip_branch=True, dim=256, ffn_dim=512, num_heads=2, num_layers=1,
                       text_dim=64)
    from wan_express.models import WanDiT
    model = WanDiT(config)
    with pytest.raises(InvalidInputError, match="needs clip_fea"):
        model(torch.randn(1, 16, 1, 2, 2), torch.tensor([1.0]), torch.randn(1, 3, 64), y=torch.randn(1, 20, 1, 2, 2))
