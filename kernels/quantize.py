"""Weight quantization with LightX2V's converter semantics (per output channel), used at load and on export.

`quantize_weight(weight, scheme)` -> (codes, scale) in the canonical form of `kernels.quantized`;
`quantize_layers(tensors, layers)` applies it eagerly to the layers of a float state dict named in a `QuantOps`
table (which layers a network quantizes is the loaders' business: ``loaders.quantization`` and its callers).
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import ModelFormatError
from .codes import QMAX
from .quantized import QuantScheme

# LightX2V's converter floors each row's amax here (activations use a smaller floor, see act_quant).
_MIN_AMAX = 1e-5


def quantize_weight(weight: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a float ``[out, in]`` weight.

    Per row r (or over the whole tensor): ``s = max(amax, 1e-5) / Qmax``; fp8: ``q = e4m3(clamp(W / s, ±448))``
    (round to nearest); int8: ``q = clamp(round(W / s), -128, 127)``. Returns codes ``[out, in]`` and fp32 scale
    ``[out, 1]`` (channel) or ``[1, 1]`` (tensor). Math in fp32.
    """
    w = weight.float()
    amax = w.abs().amax(dim=1, keepdim=True) if scheme.granularity == "channel" else w.abs().amax().reshape(1, 1)
    qmax = QMAX[scheme.codes]
    scale = amax.clamp(min=_MIN_AMAX) / qmax
    return codes_with_scale(w, scale, scheme), scale


def codes_with_scale(weight: torch.Tensor, scale: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """The codes of float ``weight`` under a given ``scale`` (``[out, 1]`` or ``[1, 1]``), rounded and saturated to
    the code range as `quantize_weight` does."""
    scaled = weight.float() / scale
    if scheme.codes == "int8":
        scaled = scaled.round().clamp(-128, 127)
    else:
        scaled = scaled.clamp(-QMAX[scheme.codes], QMAX[scheme.codes])
    return scaled.to(scheme.dtype)


def quantize_layers(tensors: Mapping[str, torch.Tensor], layers: Mapping[str, QuantScheme],
                    device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Eager quantization of a state dict: a copy of ``tensors`` where each layer of ``layers`` has its float
    ``<layer>.weight`` replaced by codes and a ``<layer>.weight_scale`` added (canonical form, left on
    ``device`` when given).

    Layers are quantized one at a time (on ``device`` when given, e.g. a GPU for speed), so peak extra memory
    is one float weight. Raises `ModelFormatError` when a named layer has no float weight.
    """
    out = dict(tensors)
    for layer, scheme in layers.items():
        key = f"{layer}.weight"
        weight = tensors.get(key)
        if weight is None or not weight.is_floating_point() or weight.dim() != 2 or weight.element_size() == 1:
            raise ModelFormatError(f"cannot quantize {layer}: {key} is not a float [out, in] weight; "
                                   f"leave the layer out of the quantization table")
        codes, scale = quantize_weight(weight.to(device) if device is not None else weight, scheme)
        out[key], out[f"{layer}.weight_scale"] = codes, scale
    return out
