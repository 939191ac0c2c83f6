"""Changing a DiT's precision at load, tensor by tensor: dequantize on purpose, or quantize per output channel.

`dequantized(view, layers)` turns every quantized layer back into fp32 weights (``quantization="bf16"``);
`quantized(view, layers, codes)` quantizes the layers LightX2V's converter quantizes (formats.md §4.1) with
`kernels.quantize.quantize_weight`. Both return lazy views: nothing is computed before the model asks.
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch

from ..kernels.quantize import quantize_weight
from ..kernels.quantized import QuantScheme
from .dit.formats import QUANTIZED_PARTS
from .files.views import TensorEntry, TensorView

log = logging.getLogger(__name__)


def dequantized(view: TensorView, layers: Mapping[str, QuantScheme]) -> TensorView:
    """Every quantized layer as an fp32 ``weight = codes * scale`` (scales dropped); other tensors unchanged."""
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


def is_quantization_target(name: str, shape: tuple[int, ...]) -> bool:
    """LightX2V's converter rule: a 2-D ``.weight`` whose third dotted part is self_attn, cross_attn or ffn."""
    parts = name.split(".")
    return len(shape) == 2 and parts[-1] == "weight" and len(parts) > 2 and parts[2] in QUANTIZED_PARTS


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


def quantized(view: TensorView, layers: Mapping[str, QuantScheme], codes: str,
              ) -> tuple[TensorView, dict[str, QuantScheme]]:
    """Quantize the converter's target layers to ``codes`` per output channel.

    Layers already stored with ``codes`` stay as they are (per-tensor ones included); layers stored with other
    codes are dequantized and re-quantized (logged, since it compounds two rounding errors).

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
        wanted = part == "weight" and (is_quantization_target(name, entry.shape) or layer in layers)
        if layer in table or not wanted:
            entries[name] = entry
            continue
        out_features = entry.shape[0]
        entries[name] = TensorEntry(entry.shape, scheme.dtype,
                                    lambda layer=layer, w=entry: cache.get(layer, w, scheme, 0))
        entries[f"{layer}.weight_scale"] = TensorEntry(scheme.scale_shape(out_features), torch.float32,
                                                       lambda layer=layer, w=entry: cache.get(layer, w, scheme, 1))
        table[layer] = scheme
    return TensorView(entries, view.name), table
