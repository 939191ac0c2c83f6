"""Discovery of the non-DiT components of an official Wan folder, explicit overrides and missing-file errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wan_express.errors import MissingComponentError
from wan_express.loaders.components import (CLIP_VISION_FILE, TEXT_ENCODER_FILE, TOKENIZER_DIR, FolderComponents,
                                            find_components)


def official_folder(root: Path, *, clip: bool = True, vaes: tuple[str, ...] = ("Wan2.1_VAE.pth",),
                    model_type: str | None = None) -> Path:
    """The file set of an official Wan folder (formats.md §3.1); contents are irrelevant to discovery."""
    root.mkdir(parents=True, exist_ok=True)
    (root / TEXT_ENCODER_FILE).write_bytes(b"t5")
    (root / TOKENIZER_DIR).mkdir(parents=True)
    (root / TOKENIZER_DIR / "tokenizer.json").write_text("{}")
    (root / "configuration.json").write_text('{"framework": "Pytorch"}')
    if clip:
        (root / CLIP_VISION_FILE).write_bytes(b"clip")
    for name in vaes:
        (root / name).write_bytes(b"vae")
    if model_type is not None:
        (root / "config.json").write_text(json.dumps({"model_type": model_type}))
    return root


def test_wan21_i2v_folder_has_everything(tmp_path):
    root = official_folder(tmp_path / "Wan2.1-I2V-14B-480P")
    found = find_components(root)
    assert found == FolderComponents(text_encoder=root / TEXT_ENCODER_FILE, tokenizer=root / TOKENIZER_DIR,
                                     clip_vision=root / CLIP_VISION_FILE, vae=root / "Wan2.1_VAE.pth", folder=root)
    assert found.missing() == []
    assert found.require("clip_vision") == root / CLIP_VISION_FILE


def test_wan22_folder_lacks_only_clip(tmp_path):
    root = official_folder(tmp_path / "Wan2.2-I2V-A14B", clip=False)
    found = find_components(root)
    assert found.clip_vision is None
    assert found.missing() == ["CLIP vision encoder (Wan2.1 I2V/FLF2V only)"]
    with pytest.raises(MissingComponentError) as error:
        found.require("clip_vision")
    assert CLIP_VISION_FILE in str(error.value) and root.name in str(error.value)


def test_ti2v_folder_takes_the_wan22_vae(tmp_path):
    root = official_folder(tmp_path / "Wan2.2-TI2V-5B", clip=False, vaes=("Wan2.2_VAE.pth",))
    assert find_components(root).vae == root / "Wan2.2_VAE.pth"


def test_both_vaes_present_config_decides(tmp_path):
    both = ("Wan2.1_VAE.pth", "Wan2.2_VAE.pth")
    ti2v = official_folder(tmp_path / "ti2v", vaes=both, model_type="ti2v")
    t2v = official_folder(tmp_path / "t2v", vaes=both, model_type="t2v")
    unknown = official_folder(tmp_path / "unknown", vaes=both)
    assert find_components(ti2v).vae.name == "Wan2.2_VAE.pth"
    assert find_components(t2v).vae.name == "Wan2.1_VAE.pth"
    assert find_components(unknown).vae.name == "Wan2.1_VAE.pth"


def test_tokenizer_folder_without_tokenizer_json_is_missing(tmp_path):
    root = official_folder(tmp_path / "model")
    (root / TOKENIZER_DIR / "tokenizer.json").unlink()
    (root / TOKENIZER_DIR / "spiece.model").write_bytes(b"sp")
    found = find_components(root)
    assert found.tokenizer is None and found.missing() == ["umT5 tokenizer"]
    with pytest.raises(MissingComponentError, match=r"google/umt5-xxl/tokenizer\.json in .*model"):
        found.require("tokenizer")


def test_explicit_paths_override_discovery(tmp_path):
    root = official_folder(tmp_path / "model")
    elsewhere = tmp_path / "comfy"
    (elsewhere / "tok").mkdir(parents=True)
    (elsewhere / "tok" / "tokenizer.json").write_text("{}")
    t5 = elsewhere / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    clip = elsewhere / "clip_vision_h.safetensors"
    vae = elsewhere / "wan_2.1_vae.safetensors"
    for path in (t5, clip, vae):
        path.write_bytes(b"x")
    found = find_components(root, text_encoder=t5, tokenizer=elsewhere / "tok" / "tokenizer.json",
                            clip_vision=clip, vae=vae)
    assert (found.text_encoder, found.tokenizer, found.clip_vision, found.vae) == (t5, elsewhere / "tok", clip, vae)


def test_explicit_paths_without_a_folder(tmp_path):
    t5 = tmp_path / "umt5.safetensors"
    t5.write_bytes(b"x")
    found = find_components(None, text_encoder=t5)
    assert found.text_encoder == t5 and found.folder is None
    with pytest.raises(MissingComponentError, match="no model folder given"):
        found.require("vae")


@pytest.mark.parametrize("field", ["text_encoder", "clip_vision", "vae", "tokenizer"])
def test_missing_explicit_path_is_an_error(tmp_path, field):
    root = official_folder(tmp_path / "model")
    absent = tmp_path / "nowhere" / "file.safetensors"
    with pytest.raises(MissingComponentError, match="given explicitly"):
        find_components(root, **{field: absent})


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(MissingComponentError, match="model folder not found"):
        find_components(tmp_path / "absent")


def test_empty_folder_misses_everything(tmp_path):
    found = find_components(tmp_path)
    assert found.missing() == ["umT5-XXL text encoder", "umT5 tokenizer",
                               "CLIP vision encoder (Wan2.1 I2V/FLF2V only)", "VAE"]
    with pytest.raises(MissingComponentError, match=TEXT_ENCODER_FILE.replace(".", r"\.")):
        found.require("text_encoder")
    with pytest.raises(MissingComponentError, match=r"Wan2\.1_VAE\.pth or Wan2\.2_VAE\.pth"):
        found.require("vae")
