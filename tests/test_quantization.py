"""The DiT and umT5 loaders share one quantization pipeline: the same stored layout gives the same canonical codes,
scales, schemes and format, a quantized tensor the umT5 cannot run is dequantized like the DiT's, and the ``fp8``
option quantizes a weight to the same codes in both."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from wan_express.kernels.quantized import QuantScheme
from wan_express.loaders.dit.loader import open_dit
from wan_express.loaders.dit.quant_targets import is_quantization_target
from wan_express.loaders.quantization import canonicalize, dequantized, quantized
from wan_express.loaders.text_encoder import canonical_text_encoder, read_text_encoder_file, umt5_rename

from .loader_files import tiny_weights, write_lightx2v, write_scaled_fp8

# DiT layer -> the umT5 tensor (HF / ComfyUI names) that stores the same codes and scale in the umT5 file.
SHARED = {"blocks.0.self_attn.q": "encoder.block.0.layer.0.SelfAttention.q",
          "blocks.1.ffn.2": "encoder.block.1.layer.1.DenseReluDense.wo"}
# A DiT target stored in the umT5 file as its token embedding (a lookup, so dequantized there).
EMBEDDED = "blocks.0.ffn.0"
STORED_LAYOUTS = {
    "lightx2v_fp8": (lambda path, w: write_lightx2v(path, w, "fp8"), ".weight_scale"),
    "lightx2v_int8": (lambda path, w: write_lightx2v(path, w, "int8"), ".weight_scale"),
    "scaled_fp8": (write_scaled_fp8, ".scale_weight"),
}
OFFICIAL_T5 = {"blocks.0.attn.q": "blocks.0.self_attn.q", "blocks.1.ffn.fc2": "blocks.1.ffn.2"}


def same_tensor(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Same dtype, shape and bits (FP8 compared as bytes)."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    if got.element_size() == 1:
        got, want = got.view(torch.uint8), want.view(torch.uint8)
    return torch.equal(got, want)


def umt5_file_from(stored: dict[str, torch.Tensor], scale_suffix: str, path):
    """A (partial) umT5 file holding the DiT file's stored codes and scales of `SHARED` and `EMBEDDED`, with the
    same scale key suffix, activation scales and marker as the DiT file."""
    out = {"encoder.final_layer_norm.weight": torch.ones(8, dtype=torch.float16)}
    for layer, t5_layer in {**SHARED, EMBEDDED: "shared"}.items():
        out[t5_layer + ".weight"] = stored[layer + ".weight"]
        out[t5_layer + scale_suffix] = stored[layer + scale_suffix]
        if "scaled_fp8" in stored:
            out[t5_layer + ".scale_input"] = torch.ones(())
    if "scaled_fp8" in stored:
        out["scaled_fp8"] = stored["scaled_fp8"]
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


@pytest.mark.parametrize("layout", STORED_LAYOUTS)
def test_umt5_and_dit_canonicalize_one_stored_layout_alike(layout, tmp_path):
    write, scale_suffix = STORED_LAYOUTS[layout]
    dit_path = write(tmp_path / "dit.safetensors", tiny_weights(seed=3))
    dit = open_dit(dit_path)
    t5_path = umt5_file_from(load_file(str(dit_path)), scale_suffix, tmp_path / "umt5.safetensors")

    raw = read_text_encoder_file(t5_path)
    summary = canonicalize(raw, umt5_rename(raw.keys()), source=str(t5_path)).summary
    assert summary["quant_format"] == dit.details["quantization"]["quant_format"] == layout
    view, layers = canonical_text_encoder(raw, source=str(t5_path))
    assert layers == {t5: dit.layers[layer] for t5, layer in OFFICIAL_T5.items()}
    for t5, layer in OFFICIAL_T5.items():
        for part in ("weight", "weight_scale"):
            assert same_tensor(view[f"{t5}.{part}"], dit.tensors[f"{layer}.{part}"]), (t5, part)
    # One dequantize: the embedding the umT5 cannot run quantized is the DiT layer's fp32 `codes * scale`.
    assert same_tensor(view["token_embedding.weight"], dequantized(dit.tensors, dit.layers)[EMBEDDED + ".weight"])
    assert not any(key.endswith(("scale_weight", "scale_input")) or key == "scaled_fp8" for key in view)
    assert "token_embedding.weight_scale" not in view


def test_fp8_option_quantizes_a_weight_alike_in_both(tmp_path):
    weights = tiny_weights(seed=4, dtype=torch.float32)
    dit = open_dit(write_lightx2v(tmp_path / "dit.safetensors", weights))
    dit_view, dit_layers = quantized(dit.tensors, dit.layers, "fp8_e4m3", is_quantization_target)
    t5_path = tmp_path / "umt5.pth"
    torch.save({t5 + ".weight": weights[layer + ".weight"] for t5, layer in OFFICIAL_T5.items()}, t5_path)
    view, layers = canonical_text_encoder(read_text_encoder_file(t5_path), quantization="fp8")
    assert layers == {t5: QuantScheme("fp8_e4m3", "channel") for t5 in OFFICIAL_T5}
    for t5, layer in OFFICIAL_T5.items():
        assert dit_layers[layer] == layers[t5]
        for part in ("weight", "weight_scale"):
            assert same_tensor(view[f"{t5}.{part}"], dit_view[f"{layer}.{part}"]), (t5, part)
