"""The loaders' error boundary: every failure on bad input is the pack's own error naming the file; JSON that comes
with models is read defensively; names taken from a file stay inside its folder.
"""

import json
import os

import pytest
import torch

from wan_express.errors import MissingComponentError, ModelFormatError
from wan_express.loaders.files.boundary import boundary, shown
from wan_express.loaders.files.json_files import contained_path, read_json


@boundary("test file")
def _raising(path, error):
    raise error


@pytest.mark.parametrize("error", [RecursionError(), ValueError("secret bytes"), OverflowError(), TypeError(),
                                   KeyError("secret"), IndexError(), ZeroDivisionError(), OSError(),
                                   NotImplementedError(), RuntimeError("secret"), UnicodeDecodeError("utf-8", b"x", 0, 1, "bad")])
def test_foreign_exceptions_become_a_format_error_naming_the_file_without_their_message(error, tmp_path):
    with pytest.raises(ModelFormatError, match=r"^models/vae/x\.safetensors: not a readable test file") as raised:
        _raising(tmp_path / "models" / "vae" / "x.safetensors", error)
    assert "secret" not in str(raised.value) and str(tmp_path) not in str(raised.value)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), MemoryError(), torch.OutOfMemoryError("CUDA out of memory")])
def test_interrupts_and_out_of_memory_pass_through_untouched(error, tmp_path):
    with pytest.raises(type(error)):
        _raising(tmp_path / "x.safetensors", error)


def test_our_errors_pass_unchanged_and_a_missing_file_is_a_missing_component(tmp_path):
    ours = ModelFormatError("x.safetensors: tensor 'a' is wrong")
    with pytest.raises(ModelFormatError) as raised:
        _raising(tmp_path / "x.safetensors", ours)
    assert raised.value is ours
    with pytest.raises(MissingComponentError, match=r"^x\.safetensors"):
        _raising(tmp_path / "x.safetensors", FileNotFoundError())


def test_shown_names_files_from_the_models_folder_or_by_name():
    assert shown("/home/u/ComfyUI/models/diffusion_models/w.safetensors") == "models/diffusion_models/w.safetensors"
    assert shown("/data/w.safetensors") == "w.safetensors"


@pytest.mark.parametrize("text,expected", [
    ("[" * 100 + "]" * 100, "deeper than"),
    ('{"a": ' + "9" * 40 + "}", "integer"),
    ('{"a": 1e999}', "too large"),
    ('{"a": NaN}', "NaN"),
    ("[1, 2]", "not a JSON object"),
    ('{"a": ', "not valid JSON"),
])
def test_hostile_json_is_refused_naming_the_file(text, expected, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ModelFormatError, match=rf"^config\.json: .*{expected}"):
        read_json(path, "config")


def test_json_that_is_not_utf8_or_missing_is_named(tmp_path):
    (tmp_path / "c.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ModelFormatError, match=r"c\.json: the config is not UTF-8"):
        read_json(tmp_path / "c.json", "config")
    with pytest.raises(MissingComponentError, match=r"d\.json: config not found"):
        read_json(tmp_path / "d.json", "config")
    (tmp_path / "ok.json").write_text(json.dumps({"a": [1, 2.5, {"b": "c"}]}))
    assert read_json(tmp_path / "ok.json", "config") == {"a": [1, 2.5, {"b": "c"}]}


@pytest.mark.parametrize("name", ["../x.safetensors", "/etc/passwd", "a/../../x", "C:\\x", "..\\x", "a\0b", "",
                                  "x" * 2000, "a/" + "y" * 300, 7, ["a"], ".", "./"])
def test_names_from_a_file_never_leave_its_folder(name, tmp_path):
    with pytest.raises(ModelFormatError, match=r"^index\.json: ") as raised:
        contained_path(tmp_path, name, tmp_path / "index.json", "shard")
    if isinstance(name, str) and len(name) > 2:
        assert name not in str(raised.value)


def test_contained_names_resolve_inside_and_symlinks_into_a_cache_stay_allowed(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "blob").write_bytes(b"x")
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink(cache / "blob", folder / "shard.safetensors")
    path = contained_path(folder, "./shard.safetensors", folder / "index.json")
    assert path == folder / "shard.safetensors" and path.read_bytes() == b"x"
    assert contained_path(folder, "sub\\a.safetensors", folder / "index.json") == folder / "sub" / "a.safetensors"
