"""Hostile component files end in the pack's own error naming the file (and key): umT5, CLIP vision, VAE, LoRA,
``.pth`` archives, and the component nodes' model choices. One small test per defect class found by fuzzing."""

import io
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from wan_express.errors import MissingComponentError, ModelFormatError, WanExpressError
from wan_express.loaders.clip_vision import load_clip_vision
from wan_express.loaders.components import resolve_component
from wan_express.loaders.files import open_tensors
from wan_express.loaders.lora import read_lora
from wan_express.loaders.text_encoder import load_text_encoder
from wan_express.loaders.vae import load_vae
from wan_express.tests.fuzz.targets_components import clip_tensors, t5_tensors, tokenizer_json, vae_tensors


@pytest.fixture
def tokenizer(tmp_path):
    folder = tmp_path / "google" / "umt5-xxl"
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_bytes(tokenizer_json())
    return folder


def umt5(tmp_path, tokenizer, **changes):
    tensors = {**t5_tensors(), **changes}
    path = tmp_path / "umt5.safetensors"
    save_file({key: value for key, value in tensors.items() if value is not None}, str(path))
    return lambda: load_text_encoder(path, tokenizer, dtype=torch.float32)


def test_tiny_valid_files_load(tmp_path, tokenizer):
    assert umt5(tmp_path, tokenizer)().model.config.num_layers == 2
    save_file(clip_tensors(), str(tmp_path / "clip.safetensors"))
    assert load_clip_vision(tmp_path / "clip.safetensors", dtype=torch.float32).config.num_layers == 2
    torch.save(vae_tensors(), str(tmp_path / "vae.pth"))
    assert load_vae(tmp_path / "vae.pth").config.version == "2.1"


def test_one_huge_block_index_is_refused_before_building(tmp_path, tokenizer):
    with pytest.raises(ModelFormatError, match=r"umt5\.safetensors: umT5 encoder block indices run to 999999 "
                                               r"but block 2 is absent"):
        umt5(tmp_path, tokenizer, **{"blocks.999999.norm1.weight": torch.ones(8)})()


def test_thousands_of_empty_clip_blocks_are_refused(tmp_path):
    tensors = dict(clip_tensors())
    tensors.update({f"visual.transformer.{i}.x": torch.zeros(0) for i in range(2, 2000)})
    save_file(tensors, str(tmp_path / "clip.safetensors"))
    with pytest.raises(ModelFormatError, match=r"clip\.safetensors: CLIP vision tower tensor transformer\.2\.norm1"):
        load_clip_vision(tmp_path / "clip.safetensors")


def test_zero_heads_and_wrong_rank_name_file_and_key(tmp_path, tokenizer):
    with pytest.raises(ModelFormatError, match=r"umt5\.safetensors: .*blocks\.0\.pos_embedding\.embedding\.weight "
                                               r"is of shape \(8, 0\)"):
        umt5(tmp_path, tokenizer, **{"blocks.0.pos_embedding.embedding.weight": torch.zeros(8, 0)})()
    with pytest.raises(ModelFormatError, match=r"token_embedding\.weight is of shape \(512,\)"):
        umt5(tmp_path, tokenizer, token_embedding=None, **{"token_embedding.weight": torch.zeros(512)})()


def test_heads_that_do_not_divide_the_width_name_the_file(tmp_path, tokenizer):
    with pytest.raises(ModelFormatError, match=r"umt5\.safetensors: umT5 q width 8 .* not a multiple of its 3 heads"):
        umt5(tmp_path, tokenizer, **{f"blocks.{i}.pos_embedding.embedding.weight": torch.zeros(8, 3)
                                     for i in range(2)})()


def test_int_and_bool_tensors_where_floats_belong(tmp_path, tokenizer):
    with pytest.raises(ModelFormatError, match=r"umt5\.safetensors: 'norm\.weight' is torch\.int32"):
        umt5(tmp_path, tokenizer, **{"norm.weight": torch.ones(8, dtype=torch.int32)})()
    tensors = dict(vae_tensors())
    tensors["conv1.weight"] = tensors["conv1.weight"].bool()
    torch.save(tensors, str(tmp_path / "vae.pth"))
    with pytest.raises(ModelFormatError, match=r"vae\.pth: tensor conv1\.weight .* stored as bool"):
        load_vae(tmp_path / "vae.pth")


def test_meta_and_sparse_tensors_in_a_pth(tmp_path):
    torch.save({"a": torch.empty(3, device="meta")}, str(tmp_path / "meta.pth"))
    with pytest.raises(ModelFormatError, match=r"meta\.pth: tensor a is a meta tensor"):
        open_tensors(tmp_path / "meta.pth")
    torch.save({"a": torch.zeros(2, 2).to_sparse()}, str(tmp_path / "sparse.pth"))
    with pytest.raises(ModelFormatError, match=r"sparse\.pth: tensor a is a torch\.sparse_coo tensor"):
        open_tensors(tmp_path / "sparse.pth")


def _rezipped(raw: bytes, rename=None, replace=None) -> bytes:
    source, buffer = zipfile.ZipFile(io.BytesIO(raw)), io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for name in source.namelist():
            content = source.read(name)
            if replace and name.endswith("data.pkl"):
                content = replace
            target.writestr(rename(name) if rename and name.endswith("data.pkl") else name, content)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["truncated", "renamed", "opcodes", "global", "missing_storage"])
def test_broken_pth_archives_name_the_file(tmp_path, damage):
    path = tmp_path / "vae.pth"
    torch.save({"a": torch.randn(4, 4), "b": torch.arange(3)}, str(path))
    raw = path.read_bytes()
    broken = {
        "truncated": lambda: raw[:len(raw) // 2],
        "renamed": lambda: _rezipped(raw, rename=lambda name: "../evil/data.pkl"),
        "opcodes": lambda: _rezipped(raw, replace=b"\x80\x02}q\x00(X\x01\x00\x00\x00ah\x00\x85R0J\xff\xff."),
        "global": lambda: _rezipped(raw, replace=b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echoq\x00\x85R."),
        "missing_storage": lambda: _rezipped(raw, replace=None) .replace(b"data/0", b"data/9"),
    }[damage]()
    path.write_bytes(broken)
    with pytest.raises(WanExpressError, match=r"^vae\.pth: ") as error:
        load_vae(path)
    assert "echo" not in str(error.value) and "Traceback" not in str(error.value)


@pytest.mark.parametrize("tensors, words", [
    ({"blocks.0.ffn.0.lora_up.weight": torch.zeros(16, 0), "blocks.0.ffn.0.lora_down.weight": torch.zeros(0, 8)},
     "(rank 0|shape \\[0, 8\\] is not)"),  # the header check may refuse the empty tensor first
    ({"blocks.0.ffn.0.lora_up.weight": torch.tensor(1.0), "blocks.0.ffn.0.lora_down.weight": torch.ones(2, 8)},
     "shape \\(\\), unusable as a LoRA up"),
    ({"blocks.0.ffn.0.lora_up.weight": torch.ones(16, 2), "blocks.0.ffn.0.lora_down.weight": torch.ones(2, 8),
      "blocks.0.ffn.0.alpha": torch.zeros(0)}, "unusable as a LoRA alpha"),
    ({"blocks.0.ffn.0.lora_up.weight": torch.ones(16, 2), "blocks.0.ffn.0.lora_down.weight": torch.ones(3, 8)},
     "has rank 2 but .* has rank 3"),
    ({"blocks.0.ffn.0.lora_up.weight": torch.full((16, 2), float("nan")),
      "blocks.0.ffn.0.lora_down.weight": torch.ones(2, 8)}, "'blocks.0.ffn.0.lora_up.weight' holds NaN or Inf"),
    ({"blocks.0.ffn.0.diff": torch.ones(16, 8, dtype=torch.int32)}, "is int32; LoRA weights are floats"),
])
def test_unusable_lora_tensors_are_reported_at_load_naming_the_key(tmp_path, tensors, words):
    save_file(tensors, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ModelFormatError, match=rf"(^|/)lora\.safetensors: .*{words}"):
        read_lora(tmp_path / "lora.safetensors")


@pytest.mark.parametrize("choice", ["../", "../../etc/passwd", "/etc/passwd", "wan/../../x/", "a\0b", "x" * 5000,
                                    "y" * 300 + "/", 7, ["a"], None, "C:\\Windows\\"])
def test_node_choices_resolve_inside_the_models_folder(tmp_path, choice):
    (tmp_path / "wan").mkdir()
    with pytest.raises(WanExpressError, match=tmp_path.name):
        resolve_component(tmp_path, choice, "vae")


def test_a_folder_choice_finds_its_component_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "wan").mkdir()
    (tmp_path / "wan" / "Wan2.1_VAE.pth").write_bytes(b"")
    assert resolve_component(tmp_path, "wan/", "vae") == tmp_path / "wan" / "Wan2.1_VAE.pth"
    with pytest.raises(MissingComponentError, match="umT5-XXL text encoder not found"):
        resolve_component(tmp_path, "wan/", "text_encoder")
