"""Per-token dynamic activation quantization, alone or fused into the op that produces the activation.

Every row (token) gets ``scale = max(amax, 1e-8) / Qmax`` (448 for FP8 e4m3, 127 for INT8, round to nearest),
so ``x ≈ codes * scale``. Entry points: `quantize_rows`, `norm_modulate_quantized` (LayerNorm + modulation),
`layer_norm_quantized` (affine LayerNorm), `gelu_tanh_quantized` and `rms_norm_quantized` (T5's RMSNorm); each
runs a Triton kernel on CUDA when Triton is installed and the PyTorch reference otherwise, as a `custom_ops` op
(opaque to `torch.compile`). The result is a `QuantizedActivation`, which `QuantLinear` consumes directly.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from . import custom_ops
from .capability import triton_available
from .codes import CODE_DTYPES, HALF_DTYPES, MIN_AMAX, QMAX


@dataclasses.dataclass
class QuantizedActivation:
    """A quantized activation: codes ``[..., K]`` (float8_e4m3fn or int8) and fp32 scales ``[..., 1]``."""

    codes: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.codes.float() * self.scale).to(dtype)


def use_triton(device: torch.device) -> bool:
    return device.type == "cuda" and triton_available()


def quantize_rows_reference(x: torch.Tensor, codes: str) -> QuantizedActivation:
    """PyTorch per-token quantization of ``x [..., K]`` (math in fp32)."""
    x32 = x.float()
    qmax = QMAX[codes]
    scale = x32.abs().amax(dim=-1, keepdim=True).clamp(min=MIN_AMAX) / qmax
    scaled = (x32 / scale).clamp(-qmax, qmax)
    if codes == "int8":
        scaled = scaled.round()
    return QuantizedActivation(scaled.to(CODE_DTYPES[codes]), scale)


def norm_modulate_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """``LN(x) * (1 + scale) + shift`` (non-affine LayerNorm) in fp32: what `TorchOps.norm_modulate` runs."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps) * (1 + scale) + shift


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine LayerNorm in fp32 (weight and bias cast to fp32): what `TorchOps.layer_norm` runs."""
    return F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """T5 RMSNorm, what `TorchOps.rms_norm` runs: ``x * rsqrt(mean(x²) + eps)`` (fp32), rounded to the weight dtype when
    that is half precision, times the weight (in that dtype, i.e. the product rounded once more)."""
    normed = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight.dtype in HALF_DTYPES:
        normed = normed.type_as(weight)
    return weight * normed


def quantize_rows(x: torch.Tensor, codes: str) -> QuantizedActivation:
    """Per-token quantization of ``x [..., K]`` (any float dtype)."""
    return QuantizedActivation(*custom_ops.quantize_rows(x, codes))


def norm_modulate_quantized(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                            codes: str) -> QuantizedActivation:
    """Quantized ``LN(x) * (1 + scale) + shift``; x: [B, S, D]; shift, scale: [B, 1 or S, D] (fp32)."""
    return QuantizedActivation(*custom_ops.norm_modulate_quant(x, shift, scale, eps, codes))


def layer_norm_quantized(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                         codes: str) -> QuantizedActivation:
    """Quantized affine LayerNorm ``LN(x) * weight + bias`` (fp32 math); x: [..., D]; weight, bias: [D]."""
    return QuantizedActivation(*custom_ops.layer_norm_quant(x, weight, bias, eps, codes))


def gelu_tanh_quantized(x: torch.Tensor, codes: str) -> QuantizedActivation:
    """Quantized ``GELU_tanh(x)`` (computed in fp32); x: [..., F]."""
    return QuantizedActivation(*custom_ops.gelu_tanh_quant(x, codes))


def rms_norm_quantized(x: torch.Tensor, weight: torch.Tensor, eps: float, codes: str) -> QuantizedActivation:
    """Quantized T5 RMSNorm (the values of `rms_norm_reference`, half-precision roundings included);
    x: [..., D], weight: [D]."""
    return QuantizedActivation(*custom_ops.rms_norm_quant(x, weight, eps, codes))
