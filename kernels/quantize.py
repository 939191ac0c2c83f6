"""Weight quantization with LightX2V's converter semantics (per output channel), used at load and on export.

`quantize_weight(weight, scheme)` -> (codes, scale) in the canonical form of `kernels.quantized`.
"""

from __future__ import annotations

import torch

from .quantized import QuantScheme

FP8_MAX = 448.0
INT8_MAX = 127.0
_MIN_AMAX = 1e-5


def quantize_weight(weight: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a float ``[out, in]`` weight.

    Per row r (or over the whole tensor): ``s = max(amax, 1e-5) / Qmax``; fp8: ``q = e4m3(clamp(W / s, ±448))``
    (round to nearest); int8: ``q = clamp(round(W / s), -128, 127)``. Returns codes ``[out, in]`` and fp32 scale
    ``[out, 1]`` (channel) or ``[1, 1]`` (tensor). Math in fp32.
    """
    w = weight.float()
    amax = w.abs().amax(dim=1, keepdim=True) if scheme.granularity == "channel" else w.abs().amax().reshape(1, 1)
    qmax = FP8_MAX if scheme.codes == "fp8_e4m3" else INT8_MAX
    scale = amax.clamp(min=_MIN_AMAX) / qmax
    scaled = w / scale
    if scheme.codes == "fp8_e4m3":
        codes = scaled.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    else:
        codes = scaled.round().clamp(-128, 127).to(torch.int8)
    return codes, scale
