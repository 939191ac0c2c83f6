"""The one quantization pipeline of every network (DiT, umT5): stored layouts -> canonical form -> the precision asked.

`canonicalize(raw, rename, metadata=..., source=...)` renames stored keys to the network's own names (``rename``,
given by each loader) and decides per layer (never per file) whether a weight is float, per-channel or per-tensor
FP8, or INT8, from ComfyUI ``comfy_quant`` metadata, the legacy ``scaled_fp8`` marker with ``scale_weight``
scalars, or LightX2V ``weight_scale`` tensors. Every quantized layer comes out as ``<layer>.weight`` codes (passed
through untouched) + ``<layer>.weight_scale`` fp32 ``[out, 1]`` or ``[1, 1]``, the canonical form of
`kernels.quantized`, with a `QuantScheme` table. Then `dequantized(view, layers)` turns layers back into fp32
weights, and `quantized(view, layers, codes, targets)` quantizes a network's target layers (its ``targets``
predicate) per output channel at load. All three return lazy views: nothing is computed before the model asks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import Counter
from typing import Any, Callable, Iterable, Mapping

import torch

from ..errors import ModelFormatError, UnsupportedModelError
from ..kernels.quantize import quantize_weight
from ..kernels.quantized import CODE_DTYPES, QuantScheme
from .files.views import TensorEntry, TensorView

log = logging.getLogger(__name__)

# Top-level marker of the legacy scaled-FP8 layout (formats.md §5.2, §4.4); it is never prefixed.
SCALED_FP8_MARKER = "scaled_fp8"
# ComfyUI per-layer metadata: a uint8 JSON tensor per layer, or one header entry for the whole file (§5.3).
COMFY_QUANT_SUFFIX = "comfy_quant"
COMFY_QUANT_METADATA = "_quantization_metadata"
# Scale key suffixes, in the order they are looked for: LightX2V / converted ComfyUI, then legacy scaled FP8.
SCALE_SUFFIXES = ("weight_scale", "scale_weight")
# Static activation scales: dropped, since activations are quantized per token at run time (performance.md).
ACTIVATION_SCALE_SUFFIXES = ("input_scale", "scale_input")
# Stored weight dtype -> QuantScheme codes.
CODES_OF_DTYPE = {torch.float8_e4m3fn: "fp8_e4m3", torch.int8: "int8"}
FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# ComfyUI comfy_quant "format" -> QuantScheme codes; formats absent here are refused by name.
COMFY_FORMATS = {"float8_e4m3fn": "fp8_e4m3", "int8_tensorwise": "int8"}

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
# The format of a file whose quantized layers all share one scheme (and that has no marker or comfy_quant).
FORMAT_OF_SCHEME = {"fp8_e4m3/channel": "lightx2v_fp8", "int8/channel": "lightx2v_int8",
                    "fp8_e4m3/tensor": "per_tensor_fp8", "int8/tensor": "per_tensor_int8"}

# Stored key -> the network's name for it, or None for a tensor that is not part of the network.
Rename = Callable[[str], "str | None"]
# (network name of a ``.weight``, its shape) -> whether the network quantizes that layer when asked to.
Targets = Callable[[str, "tuple[int, ...]"], bool]


@dataclasses.dataclass(frozen=True)
class Canonical:
    """A network's tensors in canonical form plus what was found (JSON-serialisable ``summary``)."""

    tensors: TensorView
    layers: dict[str, QuantScheme]
    summary: dict[str, Any]


def canonical_names(keys: Iterable[str], rename: Rename, source: str) -> dict[str, str]:
    """Network name -> stored key for every key ``rename`` keeps, in stored order.

    Raises:
        ModelFormatError: two stored keys map to the same name.
    """
    names: dict[str, str] = {}
    for key in keys:
        name = rename(key)
        if name is None:
            continue
        if name in names:
            raise ModelFormatError(f"{source}: keys {names[name]!r} and {key!r} both map to {name!r}")
        names[name] = key
    return names


def canonicalize(raw: TensorView, rename: Rename, *, metadata: Mapping[str, str] | None = None,
                 source: str) -> Canonical:
    """Rename to network names and bring every quantized layer to the canonical form.

    Args:
        raw: the stored tensors (stored key names).
        rename: stored key -> network name (None drops the tensor).
        metadata: safetensors header metadata (``_quantization_metadata`` may be in it).
        source: file or folder name for messages.

    Raises:
        ModelFormatError: a scale without its weight, an INT8 weight without a scale, a scale of the wrong shape.
        UnsupportedModelError: a quantization format we cannot run (e5m2, nvfp4, mxfp8, ...).
    """
    names = canonical_names(raw.keys(), rename, source)
    shapes, dtypes = raw.shapes(), raw.dtypes()

    comfy = _comfy_formats(raw, metadata or {}, names, rename, source)
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
            if scale is None and len(shape) != 2 and dtype in FLOAT8_DTYPES:
                continue  # a fully-cast file's fp8 norm / conv weight: a narrow float, widened below
            codes = CODES_OF_DTYPE[dtype]
        elif dtype in FLOAT8_DTYPES:
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
                                           _checked_scale(raw[key], key, to, source))

    entries: dict[str, TensorEntry] = {}
    for name in names:
        layer = name.rpartition(".")[0]
        if name in dropped or name.rpartition(".")[2] in SCALE_SUFFIXES:
            continue
        entry = raw.entries[names[name]]
        if layer in layers and name == f"{layer}.weight":
            entries[name] = entry
            entries[f"{layer}.weight_scale"] = scale_entries[layer]
        elif entry.dtype in FLOAT8_DTYPES:  # float8 non-linear tensors (fully-cast files) are just narrow floats
            entries[name] = TensorEntry(entry.shape, torch.float32, lambda read=entry.read: read().float())
        elif not entry.dtype.is_floating_point:
            raise ModelFormatError(f"{source}: {names[name]!r} is {entry.dtype} but is not a quantized linear "
                                   "weight with a scale")
        else:
            entries[name] = entry
    activation_scales = sum(name.rpartition(".")[2] in ACTIVATION_SCALE_SUFFIXES for name in dropped)
    summary = _summary(layers, entries, comfy, marker, unscaled, activation_scales)
    return Canonical(tensors=TensorView(entries, source), layers=layers, summary=summary)


def _checked_scale(stored: torch.Tensor, key: str, shape: tuple[int, ...], source: str) -> torch.Tensor:
    """A stored scale as fp32 ``shape``; NaN, Inf, zero or negative values mean a broken file (the layer's output
    would be NaN or zero), reported naming the key."""
    if not stored.dtype.is_floating_point:
        raise ModelFormatError(f"{source}: scale {key!r} is {stored.dtype}; quantization scales are floats")
    scale = stored.to(torch.float32).reshape(shape)
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise ModelFormatError(f"{source}: scale {key!r} holds NaN, Inf, zero or negative values; the file is "
                               "corrupt (re-download or re-convert it)")
    return scale


def _granularity(scale_shape: tuple[int, ...], out_features: int, key: str, source: str):
    if math.prod(scale_shape) == 1:
        return "tensor", (1, 1)
    if tuple(scale_shape) in ((out_features, 1), (out_features,)):
        return "channel", (out_features, 1)
    raise ModelFormatError(f"{source}: scale {key!r} has shape {list(scale_shape)}; expected per-channel "
                           f"[{out_features}, 1] or a single per-tensor value")


def _comfy_formats(raw: TensorView, metadata: Mapping[str, str], names: Mapping[str, str], rename: Rename,
                   source: str) -> dict[str, str]:
    """layer (network name) -> ComfyUI format string, from ``.comfy_quant`` tensors and header metadata."""
    formats: dict[str, str] = {}
    if COMFY_QUANT_METADATA in metadata:
        try:
            table = json.loads(metadata[COMFY_QUANT_METADATA])["layers"]
            items = [(layer, spec["format"]) for layer, spec in table.items()]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ModelFormatError(f"{source}: header metadata {COMFY_QUANT_METADATA} is not "
                                   f"{{\"layers\": {{layer: {{\"format\": ...}}}}}} ({error})") from None
        for layer, fmt in items:
            # The table names layers by their stored key; a name rename does not know is taken as a network name.
            name = rename(layer + ".weight")
            formats[name.removesuffix(".weight") if name is not None else layer] = fmt
    for name, key in names.items():
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
        fmt = FORMAT_OF_SCHEME[next(iter(schemes))]
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


def dequantized(view: TensorView, layers: Mapping[str, QuantScheme]) -> TensorView:
    """Every layer of ``layers`` as an fp32 ``weight = codes * scale`` (scales dropped); other tensors unchanged."""
    entries = {}
    for name, entry in view.entries.items():
        layer, _, part = name.rpartition(".")
        if layer in layers and part == "weight_scale":
            continue
        if layer in layers and part == "weight":
            scale = view.entries[f"{layer}.weight_scale"]
            entries[name] = TensorEntry(entry.shape, torch.float32,
                                        lambda w=entry.read, s=scale.read: w().float() * s())
        else:
            entries[name] = entry
    return TensorView(entries, view.name)


class LastLayerQuantizer:
    """Quantizes one layer once although its codes and scale are fetched separately (the model reads them in a
    row); holds only the most recent layer. ``part``: 0 the codes, 1 the scale."""

    def __init__(self):
        self.layer: str | None = None
        self.result: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, layer: str, weight: TensorEntry, scheme: QuantScheme, part: int) -> torch.Tensor:
        if self.layer != layer:
            self.layer, self.result = None, None  # drop the previous layer before computing the next
            self.result = quantize_weight(weight.read(), scheme)
            self.layer = layer
        return self.result[part]


def quantized(view: TensorView, layers: Mapping[str, QuantScheme], codes: str, targets: Targets, *,
              device: torch.device | str | None = None) -> tuple[TensorView, dict[str, QuantScheme]]:
    """Quantize the network's ``targets`` to ``codes`` per output channel.

    Layers already stored with ``codes`` stay as they are (per-tensor ones included); layers stored with other
    codes are dequantized and re-quantized (logged, since it compounds two rounding errors). Each weight is moved
    to ``device`` (when given, e.g. a GPU for speed) before it is quantized.

    Returns:
        the new view and its layer table.
    """
    source = dequantized(view, {k: v for k, v in layers.items() if v.codes != codes})
    requantized = sorted(k for k, v in layers.items() if v.codes != codes)
    if requantized:
        log.warning("%s: re-quantizing %d %s layers to %s (dequantize, then quantize per channel)", view.name,
                    len(requantized), layers[requantized[0]].codes, codes)
    scheme = QuantScheme(codes, "channel")
    cache = LastLayerQuantizer()
    entries, table = {}, {k: v for k, v in layers.items() if v.codes == codes}
    for name, entry in source.entries.items():
        layer, _, part = name.rpartition(".")
        wanted = part == "weight" and (targets(name, entry.shape) or layer in layers)
        if layer in table or not wanted:
            entries[name] = entry
            continue
        if device is not None:
            entry = TensorEntry(entry.shape, entry.dtype, lambda read=entry.read: read().to(device))
        entries[name] = TensorEntry(entry.shape, scheme.dtype,
                                    lambda layer=layer, w=entry: cache.get(layer, w, scheme, 0))
        entries[f"{layer}.weight_scale"] = TensorEntry(scheme.scale_shape(entry.shape[0]), torch.float32,
                                                       lambda layer=layer, w=entry: cache.get(layer, w, scheme, 1))
        table[layer] = scheme
    return TensorView(entries, view.name), table
