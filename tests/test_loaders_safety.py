"""Safe reading: malformed safetensors headers, pickles that would run code, and the wrong file given as a DiT.

Every refusal is a `WanExpressError` whose message names the file (and tensor) and what is wrong.
"""

import json
import sys
import struct

import pytest
import torch

from wan_express.errors import ModelFormatError, UnsupportedModelError
from wan_express.loaders.dit.loader import load_dit, open_dit
from wan_express.loaders.files.header import read_header, read_tensor
from wan_express.loaders.files.pth import read_pth

from .loader_files import per_channel, save, tiny_weights, write_lightx2v, write_official


def write_raw(path, header: dict, data: bytes = b"", length: int | None = None):
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)
    return path


GOOD = {"a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


def test_a_valid_header_reads(tmp_path):
    header = read_header(write_raw(tmp_path / "ok.safetensors", GOOD, bytes(16)))
    assert header.tensors["a.weight"].shape == (2, 2)


@pytest.mark.parametrize("case,expected", [
    ("short", r"short\.safetensors: truncated: 3 bytes"),
    ("header_cut", r"header_cut\.safetensors: truncated or not a safetensors file: the header claims 999"),
    ("bad_json", r"bad_json\.safetensors: the safetensors header is not valid JSON"),
    ("not_object", r"not_object\.safetensors: the safetensors header is not a JSON object"),
    ("out_of_range", r"out_of_range\.safetensors: tensor 'a\.weight': data_offsets \[0, 16\] run past the end of "
                     r"the data section \(8 bytes\); the file is truncated"),
    ("unknown_dtype", r"unknown_dtype\.safetensors: tensor 'a\.weight': unknown dtype 'F7'"),
    ("size_mismatch", r"size_mismatch\.safetensors: tensor 'a\.weight': shape \[3, 2\] of F32 needs 24 bytes but "
                      r"its data range holds 16"),
    ("bad_shape", r"bad_shape\.safetensors: tensor 'a\.weight': shape \[-1, 2\] is not a list"),
    ("bad_offsets", r"bad_offsets\.safetensors: tensor 'a\.weight': data_offsets \[16, 0\] are not an ordered"),
])
def test_malformed_headers_are_refused_naming_file_and_tensor(case, expected, tmp_path):
    path = tmp_path / f"{case}.safetensors"
    entry = dict(GOOD["a.weight"])
    if case == "short":
        path.write_bytes(b"abc")
    elif case == "header_cut":
        write_raw(path, GOOD, length=999)
    elif case == "bad_json":
        path.write_bytes(struct.pack("<Q", 5) + b"{oops" + bytes(16))
    elif case == "not_object":
        write_raw(path, [1, 2], bytes(16))
    elif case == "out_of_range":
        write_raw(path, GOOD, bytes(8))
    else:
        entry.update({"unknown_dtype": {"dtype": "F7"}, "size_mismatch": {"shape": [3, 2]},
                      "bad_shape": {"shape": [-1, 2]}, "bad_offsets": {"data_offsets": [16, 0]}}[case])
        write_raw(path, {"a.weight": entry}, bytes(16))
    with pytest.raises(ModelFormatError, match=expected):
        read_header(path)


def test_header_errors_name_the_file_from_models_down_never_by_its_machine_path(tmp_path):
    """The same naming as every loader (`boundary.shown`), so the node layer has no machine path left to rewrite."""
    cut = tmp_path / "models" / "diffusion_models" / "cut.safetensors"
    cut.parent.mkdir(parents=True)
    write_raw(cut, GOOD, length=999)
    for load in (read_header, load_dit):
        with pytest.raises(ModelFormatError) as raised:
            load(cut)
        assert str(raised.value).startswith("models/diffusion_models/cut.safetensors: truncated or not a "), load
        assert str(tmp_path) not in str(raised.value)

    loose = write_raw(tmp_path / "loose.safetensors", {"a.weight": {**GOOD["a.weight"], "dtype": "F7"}}, bytes(16))
    with pytest.raises(ModelFormatError) as raised:
        read_header(loose)
    assert str(raised.value).startswith("loose.safetensors: tensor 'a.weight': unknown dtype 'F7'")

    shrinking = write_raw(cut.parent / "shrinking.safetensors", GOOD, bytes(16))
    header = read_header(shrinking)
    shrinking.write_bytes(shrinking.read_bytes()[:-4])  # changed on disk between the header and the tensor read
    with pytest.raises(ModelFormatError) as raised:
        read_tensor(header, "a.weight")
    assert str(raised.value).startswith("models/diffusion_models/shrinking.safetensors: tensor 'a.weight': file "
                                        "ended after 12 of 16 bytes")


def test_a_truncated_model_file_fails_at_open_with_the_tensor_named(tmp_path):
    path = write_lightx2v(tmp_path / "cut.safetensors", tiny_weights())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 1000])
    with pytest.raises(ModelFormatError, match=r"cut\.safetensors: tensor '.+': data_offsets .* truncated"):
        load_dit(path)


class RunsCode:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "distill_model.pt"
    torch.save({"blocks.0.self_attn.q.weight": torch.zeros(2, 2), "payload": RunsCode(marker)}, path)
    with pytest.raises(ModelFormatError, match=r"distill_model\.pt: refused to load: .*pickled code is never "
                                               "executed"):
        read_pth(path)
    with pytest.raises(ModelFormatError, match="refused to load"):
        load_dit(path)
    with pytest.raises(ModelFormatError, match="refused to load"):
        load_dit(tmp_path)  # found in the folder by name, refused the same way
    assert not marker.exists()


def test_training_checkpoints_are_unwrapped_and_legacy_pickles_read(tmp_path):
    weights = {"blocks.0.self_attn.q.weight": torch.randn(2, 2)}
    wrapped = tmp_path / "distill_model.pt"
    torch.save({"state_dict": weights, "epoch": 3, "step": torch.tensor(7)}, wrapped)
    assert torch.equal(read_pth(wrapped)["blocks.0.self_attn.q.weight"], weights["blocks.0.self_attn.q.weight"])
    legacy = tmp_path / "legacy.pth"  # the pre-zip serialization cannot be memory-mapped
    torch.save(weights, legacy, _use_new_zipfile_serialization=False)
    assert read_pth(legacy).keys() == weights.keys()
    odd = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "notes": "x"}, odd)
    with pytest.raises(ModelFormatError, match=r"odd\.pth: expected a dict of tensors .*'epoch': int, 'notes': str"):
        read_pth(odd)


@pytest.mark.parametrize("tensors,what", [
    ({"decoder.middle.0.residual.0.gamma": torch.ones(4, 1, 1, 1), "encoder.conv1.weight": torch.ones(2, 3)},
     "a Wan VAE"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.ones(4, 8),
      "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.ones(8, 4)}, "a LoRA"),
    ({"blocks.0.attn.q.weight": torch.ones(4, 4), "token_embedding.weight": torch.ones(10, 4)},
     "a umT5 text encoder"),
    ({"visual.transformer.0.attn.to_qkv.weight": torch.ones(6, 2)}, "a CLIP vision encoder"),
])
def test_another_component_given_as_dit_is_named(tensors, what, tmp_path):
    path = save(tensors, tmp_path / "component.safetensors")
    with pytest.raises(ModelFormatError, match=f"component.safetensors: this is {what} .*not a Wan DiT"):
        load_dit(path)


def test_a_vae_pth_given_as_dit_is_named(tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"decoder.middle.0.residual.0.gamma": torch.ones(4, 1, 1, 1)}, path)
    with pytest.raises(ModelFormatError, match="this is a Wan VAE"):
        load_dit(path)


def test_an_unrelated_file_is_not_a_dit(tmp_path):
    path = save({"foo.bar": torch.ones(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ModelFormatError, match=r"other\.safetensors: not a Wan DiT: none of head\.modulation"):
        load_dit(path)


def _quantized(tmp_path, edit):
    weights = tiny_weights()
    tensors = dict(weights)
    codes, scale = per_channel(weights["blocks.0.ffn.0.weight"], "int8")
    tensors["blocks.0.ffn.0.weight"], tensors["blocks.0.ffn.0.weight_scale"] = codes, scale
    edit(tensors)
    return save(tensors, tmp_path / "edited.safetensors")


@pytest.mark.parametrize("edit,error,expected", [
    (lambda t: t.pop("blocks.0.ffn.0.weight_scale"), ModelFormatError,
     r"quantized weight 'blocks\.0\.ffn\.0\.weight' has no scale"),
    (lambda t: t.update({"blocks.0.ffn.9.weight_scale": torch.ones(512, 1)}), ModelFormatError,
     r"scale 'blocks\.0\.ffn\.9\.weight_scale' has no weight"),
    (lambda t: t.update({"blocks.0.ffn.0.weight_scale": torch.ones(7, 1)}), ModelFormatError,
     r"scale 'blocks\.0\.ffn\.0\.weight_scale' has shape \[7, 1\]; expected per-channel \[512, 1\]"),
    (lambda t: t.update({"blocks.0.ffn.2.weight_scale": torch.ones(256, 1)}), ModelFormatError,
     r"'blocks\.0\.ffn\.2\.weight' has the scale 'blocks\.0\.ffn\.2\.weight_scale' but is torch\.bfloat16"),
    (lambda t: t.update({"blocks.0.ffn.0.weight": t["blocks.0.ffn.0.weight"].float().to(torch.float8_e5m2)}),
     UnsupportedModelError, r"'blocks\.0\.ffn\.0\.weight' is torch\.float8_e5m2"),
    (lambda t: t.update({"blocks.0.ffn.0.comfy_quant": torch.tensor(list(b'{"format": "nvfp4"}'),
                                                                    dtype=torch.uint8)}),
     UnsupportedModelError, r"layer 'blocks\.0\.ffn\.0' uses ComfyUI format 'nvfp4'"),
    (lambda t: t.update({"blocks.0.ffn.0.comfy_quant": torch.tensor(list(b"{bad"), dtype=torch.uint8)}),
     ModelFormatError, r"'blocks\.0\.ffn\.0\.comfy_quant' is not a JSON object"),
])
def test_inconsistent_quantization_is_a_hard_error(edit, error, expected, tmp_path):
    path = _quantized(tmp_path, edit)
    with pytest.raises(error, match=expected):
        open_dit(path)


def test_bad_quantization_metadata_is_named(tmp_path):
    path = save(tiny_weights(), tmp_path / "meta.safetensors", metadata={"_quantization_metadata": "{nope"})
    with pytest.raises(ModelFormatError, match=r"meta\.safetensors: header metadata _quantization_metadata is not"):
        open_dit(path)


def test_unknown_quantization_option_is_refused(tmp_path):
    from wan_express.errors import InvalidInputError
    with pytest.raises(InvalidInputError, match="quantization 'fp4' is not one of auto, bf16, fp8, int8"):
        load_dit(tmp_path, quantization="fp4")


def test_fp8_weights_without_any_scale_run_with_scale_one_but_one_missing_scale_is_an_error(tmp_path):
    weights = tiny_weights()
    plain = {k: (v.float().to(torch.float8_e4m3fn) if k.endswith("self_attn.q.weight") else v)
             for k, v in weights.items()}
    source = open_dit(save(plain, tmp_path / "plain_fp8.safetensors"))
    assert source.details["quantization"]["quant_format"] == "unscaled_fp8"
    assert torch.equal(source.tensors["blocks.0.self_attn.q.weight_scale"], torch.ones(1, 1))
    codes, scale = per_channel(weights["blocks.0.ffn.0.weight"], "fp8")
    plain.update({"blocks.0.ffn.0.weight": codes, "blocks.0.ffn.0.weight_scale": scale})
    with pytest.raises(ModelFormatError, match=r"'blocks\.0\.self_attn\.q\.weight' has no scale"):
        open_dit(save(plain, tmp_path / "broken_fp8.safetensors"))


# Files opened outside the model folders of the containment test (one audit hook for the whole module).
OPENED: list[str] = []
sys.addaudithook(lambda event, args: OPENED.append(args[0]) if event == "open" and args and isinstance(args[0], str)
                 and args[0].endswith(("outside.safetensors", "hostname")) else None)


@pytest.mark.parametrize("escape", ["../outside.safetensors", "/etc/hostname", "..\\outside.safetensors",
                                    "C:/outside.safetensors", "sub/../../outside.safetensors"])
def test_an_index_naming_a_shard_outside_its_folder_is_refused_before_anything_is_opened(escape, tmp_path):
    folder = write_official(tmp_path / "model", tiny_weights(seed=1))
    outside = save(tiny_weights(seed=2), tmp_path / "outside.safetensors")
    index_file = folder / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = escape
    index_file.write_text(json.dumps(index))
    OPENED.clear()
    with pytest.raises(ModelFormatError, match=r"names a shard outside its folder; only files inside model/") as error:
        open_dit(folder)
    assert escape not in str(error.value) and not OPENED and outside.is_file()


def test_a_shard_that_is_a_symlink_inside_the_folder_still_loads(tmp_path):
    folder = write_official(tmp_path / "snapshot", tiny_weights(seed=1))
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for shard in sorted(folder.glob("diffusion_pytorch_model-*.safetensors")):  # a download cache's layout
        blob = blobs / shard.name
        shard.rename(blob)
        shard.symlink_to(blob)
    assert open_dit(folder).config.num_layers == tiny_weights.__defaults__[0].num_layers
