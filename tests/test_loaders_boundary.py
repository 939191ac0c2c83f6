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


# --- the defects the fuzzers found, one small test each ------------------------------------------------------------

import struct  # noqa: E402

from wan_express.errors import InvalidInputError  # noqa: E402
from wan_express.loaders.dit.lightx2v_config import read_lightx2v_config  # noqa: E402
from wan_express.loaders.dit.loader import load_dit, open_dit  # noqa: E402
from wan_express.loaders.files.header import read_header  # noqa: E402
from wan_express.models.block_indices import block_count  # noqa: E402
from wan_express.nodes.host import model_choice  # noqa: E402

from .loader_files import save, tiny_weights, write_lightx2v  # noqa: E402


def _raw(path, header, data=b""):
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def _entry(begin, end, shape=None, dtype="U8"):
    return {"dtype": dtype, "shape": shape if shape is not None else [end - begin], "data_offsets": [begin, end]}


@pytest.mark.parametrize("header,data,expected", [
    ({"a": _entry(0, 8), "b": _entry(0, 8)}, 8, "overlaps another tensor"),
    ({**{f"k{i}": _entry(0, 8) for i in range(1000)}}, 8, "overlaps another tensor"),
    ({"a": _entry(0, 4), "b": _entry(6, 8)}, 8, "leaves a gap"),
    ({"a": _entry(0, 8)}, 12, "the data section has 12"),
    ({"a": _entry(0, 0, [2**40, 0])}, 0, "sizes this file can hold"),
    ({"a": _entry(0, 8, [1] * 9)}, 8, "at most 8"),
])
def test_safetensors_ranges_must_tile_the_data_section_and_dims_fit_the_file(header, data, expected, tmp_path):
    with pytest.raises(ModelFormatError, match=rf"x\.safetensors.*{expected}"):
        read_header(_raw(tmp_path / "x.safetensors", header, bytes(data)))


@pytest.mark.parametrize("shape_text", ["[" * 5000 + "]" * 5000, "[" + "9" * 5000 + "]", "[1e999]"])
def test_hostile_json_in_a_header_is_our_error(shape_text, tmp_path):
    text = ('{"a": {"dtype": "U8", "shape": ' + shape_text + ', "data_offsets": [0, 1]}}').encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0")
    with pytest.raises(ModelFormatError, match=r"x\.safetensors: the safetensors header is not valid JSON"):
        read_header(path)


def test_block_counts_are_bounded_by_the_tensors_present():
    keys = [f"blocks.0.{name}" for name in ("a", "b", "c", "d")]
    with pytest.raises(ModelFormatError, match=r"m\.safetensors: block index 1000000 is beyond the 5 tensors"):
        block_count(keys + ["blocks.1000000.a"], "m.safetensors")
    empties = [f"blocks.{i}.x" for i in range(1, 3000)]
    with pytest.raises(ModelFormatError, match=r"block 1 holds 1 tensors where block 0 holds 4"):
        block_count(keys + empties, "m.safetensors")
    assert block_count(keys + [k.replace("0", "1") for k in keys], "m") == 2


def test_a_width_without_whole_heads_is_named(tmp_path):
    weights = tiny_weights()
    weights["patch_embedding.weight"] = weights["patch_embedding.weight"][:100]
    with pytest.raises(ModelFormatError, match=r"narrow\.safetensors.*not a multiple of the 128-wide"):
        open_dit(save(weights, tmp_path / "narrow.safetensors"))


def test_a_wrong_rank_shape_is_our_error_not_an_index_error(tmp_path):
    weights = tiny_weights()
    weights["head.head.weight"] = torch.zeros(())
    with pytest.raises(ModelFormatError, match=r"rank\.safetensors.*'head\.head\.weight' has shape \[\]"):
        load_dit(save(weights, tmp_path / "rank.safetensors"))


@pytest.mark.parametrize("value", [0.0, float("nan"), float("inf"), -1.0])
def test_broken_quantization_scales_are_reported_at_load_naming_the_key(value, tmp_path):
    path = write_lightx2v(tmp_path / "q.safetensors", tiny_weights(), "fp8")
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    tensors["blocks.0.ffn.0.weight_scale"][3] = value
    with pytest.raises(ModelFormatError, match=r"'blocks\.0\.ffn\.0\.weight_scale' holds NaN, Inf, zero"):
        load_dit(save(tensors, tmp_path / "q.safetensors"))


@pytest.mark.parametrize("config", [{"dit_original_ckpt": "../../w.safetensors"}, {"model_path": "/etc"},
                                    {"model_path": ".", "lora_configs": [{"path": "/etc/hostname"}]}])
def test_paths_in_a_lightx2v_config_stay_in_its_folder(config, tmp_path):
    path = tmp_path / "cfg" / "c.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"^c\.json: it names a .* outside its folder"):
        read_lightx2v_config(path)


@pytest.mark.parametrize("choice", ["../", "../../etc/", "/etc/", "model/../../", "..\\x/", "a\0b/"])
def test_widget_folder_choices_stay_in_the_models_folder(choice, tmp_path):
    root = tmp_path / "models" / "wan_express"
    (root / "model").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="not a model folder or config inside models/wan_express"):
        model_choice([root], choice)
    assert model_choice([root], "model/") == root / "model"
