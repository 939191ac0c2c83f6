"""Quantization layouts of DiT files -> the canonical quantized form of `kernels.quantized` (formats.md §7.1 step 2).

Entry point: `canonicalize(raw, metadata, layout, source)` decides per layer (never per file) whether a weight is
float, per-channel or per-tensor FP8, or INT8, from ComfyUI ``comfy_quant`` metadata, the legacy ``scaled_fp8``
marker with ``scale_weight`` scalars, or LightX2V ``weight_scale`` tensors, and returns official-named tensors where
every quantized layer is ``<layer>.weight`` codes + ``<layer>.weight_scale`` fp32 ``[out,1]`` or ``[1,1]``.
Codes are passed through untouched: nothing is dequantized here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from typing import Any, Mapping

import torch

from ...errors import ModelFormatError, UnsupportedModelError
from ...kernels.quantized import CODE_DTYPES, QuantScheme
from ..files.views import TensorEntry, TensorView
from .diffusers_keys import official_key
from .formats import (ACTIVATION_SCALE_SUFFIXES, CODES_OF_DTYPE, COMFY_FORMATS, COMFY_QUANT_METADATA,
                          COMFY_QUANT_SUFFIX, SCALE_SUFFIXES, SCALED_FP8_MARKER)
from .layouts import KeyLayout

_FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)

# File-level format names (inspect's "quant_format") -> plain description.
FORMAT_DESCRIPTIONS = {
    "float": "unquantized float weights",
    "lightx2v_fp8": "LightX2V scaled_fp8_e4m3: FP8 E4M3 codes, one fp32 scale per output channel",
    "lightx2v_int8": "LightX2V int8: INT8 codes, one scale per output channel",
    "per_tensor_fp8": "FP8 E4M3 codes with one weight_scale per tensor",
    "scaled_fp8": "legacy scaled FP8 (scaled_fp8 marker, one scale_weight per tensor)",
    "comfy_quant": "ComfyUI mixed precision (per-layer comfy_quant metadata)",
    "unscaled_fp8": "FP8 E4M3 weights without scales (scale 1)",
    "per_tensor_int8": "INT8 codes with one weight_scale per tensor",
    "mixed": "several quantization schemes in one file",
}


@dataclasses.dataclass(frozen=True)
class CanonicalDit:
    """A DiT's tensors in canonical form plus what was found (JSON-serialisable ``summary``)."""

    tensors: TensorView
    layers: dict[str, QuantScheme]
    summary: dict[str, Any]


def canonicalize(raw: TensorView, metadata: Mapping[str, str], layout: KeyLayout, source: str) -> CanonicalDit:
    """Rename to official keys and bring every quantized layer to the canonical form.

    Args:
        raw: the stored tensors (stored key names).
        metadata: safetensors header metadata (``_quantization_metadata`` may be in it).
        layout: prefix and naming found by `layouts.detect_key_layout`.
        source: file or folder name for messages.

    Raises:
        ModelFormatError: a scale without its weight, an INT8 weight without a scale, a scale of the wrong shape.
        UnsupportedModelError: a quantization format we cannot run (e5m2, nvfp4, mxfp8, ...).
    """
    names = layout.names
    shapes, dtypes = raw.shapes(), raw.dtypes()

    comfy = _comfy_formats(raw, metadata, layout, source)
    marker = _marker(raw, names, source)
    dropped = {name for name in names if name == SCALED_FP8_MARKER or name.endswith("." + COMFY_QUANT_SUFFIX)
               or name.rpartition(".")[2] in ACTIVATION_SCALE_SUFFIXES}
    scale_of: dict[str, str] = {}
    for name in names:
        layer, _, suffix = name.rpartition(".")
        if suffix in SCALE_SUFFIXES and name not in dropped:
            if f"{layer}.weight" not in names:
                raise ModelFormatError(f"{source}: scale {names[name]!r} has no weight {layer + '.weight'!r}")
            scale_of.setdefault(layer, name)

    layers: dict[str, QuantScheme] = {}
    scale_entries: dict[str, TensorEntry] = {}
    unscaled = 0
    for name in names:
        layer, _, suffix = name.rpartition(".")
        if suffix != "weight" or name in dropped:
            continue
        dtype, shape = dtypes[names[name]], shapes[names[name]]
        scale = scale_of.get(layer)
        if layer in comfy:
            codes = COMFY_FORMATS.get(comfy[layer])
            if codes is None:
                raise UnsupportedModelError(
                    f"{source}: layer {layer!r} uses ComfyUI format {comfy[layer]!r}; supported: "
                    f"{', '.join(COMFY_FORMATS)}")
        elif dtype in CODES_OF_DTYPE:
            if scale is None and len(shape) != 2 and dtype in _FLOAT8:
                continue  # a fully-cast file's fp8 norm / conv weight: a narrow float, widened below
            codes = CODES_OF_DTYPE[dtype]
        elif dtype in _FLOAT8:
            raise UnsupportedModelError(f"{source}: {names[name]!r} is {dtype}; only float8_e4m3fn and int8 "
                                        "quantized weights are supported")
        elif scale is not None:
            raise ModelFormatError(f"{source}: {names[name]!r} has the scale {names[scale]!r} but is {dtype}, "
                                   "not FP8 or INT8 codes")
        else:
            continue
        if dtype != CODE_DTYPES[codes] or len(shape) != 2:
            raise ModelFormatError(f"{source}: {names[name]!r} is {dtype} {list(shape)}; a {codes} layer needs "
                                   f"{CODE_DTYPES[codes]} codes of shape [out, in]")
        if scale is None:
            # Only a file with no scales at all is "plain fp8" (scale 1); one missing scale means a broken file.
            if codes != "fp8_e4m3" or layer in comfy or scale_of:
                raise ModelFormatError(f"{source}: quantized weight {names[name]!r} has no scale "
                                       f"({layer}.weight_scale); the file is incomplete")
            unscaled += 1
            layers[layer] = QuantScheme(codes, "tensor")
            scale_entries[layer] = TensorEntry((1, 1), torch.float32, lambda: torch.ones(1, 1))
            continue
        granularity, scale_shape = _granularity(shapes[names[scale]], shape[0], names[scale], source)
        layers[layer] = QuantScheme(codes, granularity)
        scale_entries[layer] = TensorEntry(scale_shape, torch.float32, lambda key=names[scale], to=scale_shape:
                                           raw[key].to(torch.float32).reshape(to))

    entries: dict[str, TensorEntry] = {}
    for name in names:
        layer = name.rpartition(".")[0]
        if name in dropped or name.rpartition(".")[2] in SCALE_SUFFIXES:
            continue
        entry = raw.entries[names[name]]
        if layer in layers and name == f"{layer}.weight":
            entries[name] = entry
            entries[f"{layer}.weight_scale"] = scale_entries[layer]
        elif entry.dtype in _FLOAT8:  # float8 non-linear tensors (fully-cast files) are just narrow floats
            entries[name] = TensorEntry(entry.shape, torch.float32, lambda read=entry.read: read().float())
        elif not entry.dtype.is_floating_point:
            raise ModelFormatError(f"{source}: {names[name]!r} is {entry.dtype} but is not a quantized linear "
                                   "weight with a scale")
        else:
            entries[name] = entry
    summary = _summary(layers, entries, comfy, marker, unscaled, len([n for n in dropped
                                                                      if n.rpartition(".")[2]
                                                                      in ACTIVATION_SCALE_SUFFIXES]))
    return CanonicalDit(tensors=TensorView(entries, source), layers=layers, summary=summary)


def _granularity(scale_shape: tuple[int, ...], out_features: int, key: str, source: str):
    if math.prod(scale_shape) == 1:
        return "tensor", (1, 1)
    if tuple(scale_shape) in ((out_features, 1), (out_features,)):
        return "channel", (out_features, 1)
    raise ModelFormatError(f"{source}: scale {key!r} has shape {list(scale_shape)}; expected per-channel "
                           f"[{out_features}, 1] or a single per-tensor value")


def _comfy_formats(raw: TensorView, metadata: Mapping[str, str], layout: KeyLayout, source: str) -> dict[str, str]:
    """layer (official name) -> ComfyUI format string, from ``.comfy_quant`` tensors and header metadata."""
    formats: dict[str, str] = {}
    if COMFY_QUANT_METADATA in metadata:
        try:
            table = json.loads(metadata[COMFY_QUANT_METADATA])["layers"]
            items = [(layer, spec["format"]) for layer, spec in table.items()]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ModelFormatError(f"{source}: header metadata {COMFY_QUANT_METADATA} is not "
                                   f"{{\"layers\": {{layer: {{\"format\": ...}}}}}} ({error})") from None
        for layer, fmt in items:
            layer = layer[len(layout.prefix):] if layer.startswith(layout.prefix) else layer
            formats[official_key(layer + ".weight", source=source)[:-7] if layout.diffusers else layer] = fmt
    for name, key in layout.names.items():
        if name.endswith("." + COMFY_QUANT_SUFFIX):
            try:
                spec = json.loads(bytes(raw[key].numpy()).decode("utf-8"))
                formats[name.rpartition(".")[0]] = spec["format"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
                raise ModelFormatError(f"{source}: {key!r} is not a JSON object with a \"format\" ({error})") from None
    return formats


def _marker(raw: TensorView, names: Mapping[str, str], source: str) -> dict[str, Any] | None:
    if SCALED_FP8_MARKER not in names:
        return None
    entry = raw.entries[names[SCALED_FP8_MARKER]]
    if entry.dtype == torch.float8_e5m2:
        raise UnsupportedModelError(f"{source}: the {SCALED_FP8_MARKER} marker is float8_e5m2; only e4m3fn "
                                    "scaled FP8 files are supported")
    elements = math.prod(entry.shape)
    # Two elements ask ComfyUI for "full precision matrix mult" (dequantize, then bf16 matmul).
    return {"elements": elements, "dtype": str(entry.dtype).removeprefix("torch."),
            "full_precision_matmul": elements == 2}


def _summary(layers, entries, comfy, marker, unscaled, activation_scales) -> dict[str, Any]:
    schemes = Counter(f"{s.codes}/{s.granularity}" for s in layers.values())
    if comfy:
        fmt = "comfy_quant"
    elif marker is not None:
        fmt = "scaled_fp8"
    elif not schemes:
        fmt = "float"
    elif unscaled == len(layers):
        fmt = "unscaled_fp8"
    elif len(schemes) > 1:
        fmt = "mixed"
    else:
        fmt = {"fp8_e4m3/channel": "lightx2v_fp8", "int8/channel": "lightx2v_int8",
               "fp8_e4m3/tensor": "per_tensor_fp8", "int8/tensor": "per_tensor_int8"}[next(iter(schemes))]
    quantized_keys = {f"{layer}.{part}" for layer in layers for part in ("weight", "weight_scale")}
    float_dtypes = Counter(str(e.dtype).removeprefix("torch.") for name, e in entries.items()
                           if name not in quantized_keys)
    return {
        "quant_format": fmt,
        "description": FORMAT_DESCRIPTIONS[fmt],
        "quantized_layers": len(layers),
        "schemes": dict(sorted(schemes.items())),
        "float_dtypes": dict(sorted(float_dtypes.items())),
        "marker": marker,
        "comfy_formats": dict(sorted(Counter(comfy.values()).items())),
        "unscaled_fp8_layers": unscaled,
        "dropped_activation_scales": activation_scales,
    }
