"""The W8A8 GEMM and the fused activation quantizers as `torch.library` custom ops (namespace ``wan_express``).

`torch.compile` sees each op as one opaque node with a fake implementation (output shapes and dtypes), instead of
tracing into Triton launches, backend timing or device checks, so a compiled block has no graph break there.
- `w8a8_gemm(a, a_scale, weight, w_scale, bias, backend)`: FP8/INT8 codes × codes -> bf16 ``[M, N]`` through
  `backends` (cuBLASLt `_scaled_mm`, our Triton GEMM, `_int_mm`), or by dequantizing both operands where none runs;
  "auto" is resolved (timed) at the first real call of each shape, i.e. at warm-up, and kept.
- `dequant_linear(x, weight, w_scale, bias, dtype)`: a float input times the dequantized weight (the fallback of
  devices without 8-bit tensor cores).
- `quantize_rows`, `norm_modulate_quant`, `layer_norm_quant`, `gelu_tanh_quant`, `rms_norm_quant`: per-token
  quantization, alone or fused into its producer, -> (codes ``[..., K]``, fp32 scale ``[..., 1]``); Triton on CUDA
  when installed, the PyTorch references of `act_quant` elsewhere.
`act_quant` and `quantized` call these; nothing else needs to.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .codes import CODE_DTYPES

Tensor = torch.Tensor
# Imported as a top-level ``kernels`` package (a package probe, e.g. transformers looking for a ``kernels`` install,
# run from the repository root) this module must neither register the ops a second time nor import outside itself.
_STRAY_COPY = "." not in (__package__ or "")


def _custom_op(name: str, fake):
    """Registers the decorated function as ``wan_express::<name>`` (no input mutated) with ``fake`` as its fake."""
    def register(function):
        if _STRAY_COPY:
            return function
        op = torch.library.custom_op(f"wan_express::{name}", mutates_args=())(function)
        op.register_fake(fake)
        return op
    return register


def _backends():
    from . import backends  # not at import: see _STRAY_COPY
    return backends


def _codes_of(a: Tensor) -> str:
    return "int8" if a.dtype == torch.int8 else "fp8_e4m3"


def _w8a8_gemm_fake(a, a_scale, weight, w_scale, bias, backend):
    return a.new_empty(a.shape[0], weight.shape[0], dtype=torch.bfloat16)  # backends.OUT_DTYPE


@_custom_op("w8a8_gemm", _w8a8_gemm_fake)
def w8a8_gemm(a: Tensor, a_scale: Tensor, weight: Tensor, w_scale: Tensor, bias: Optional[Tensor],
              backend: str) -> Tensor:
    """``(a[M, K] @ weight[N, K]ᵀ) * a_scale[M, 1] * w_scale[1, N] + bias[N]`` in bf16; a and weight hold the same
    codes (float8_e4m3fn or int8), scales are fp32, bias bf16. ``backend``: a name of `backends.BACKEND_NAMES`."""
    backends = _backends()
    choice = backends.choose(_codes_of(a), backend, a, a_scale, weight, w_scale, bias)
    if choice != "dequant":
        return backends.GEMMS[choice](a, a_scale, weight, w_scale, bias)
    out = (a.float() * a_scale) @ (weight.float() * w_scale.reshape(-1, 1)).t()
    return (out if bias is None else out + bias.float()).to(backends.OUT_DTYPE)


def _dequant_linear_fake(x, weight, w_scale, bias, dtype):
    return x.new_empty(*x.shape[:-1], weight.shape[0], dtype=dtype)


@_custom_op("dequant_linear", _dequant_linear_fake)
def dequant_linear(x: Tensor, weight: Tensor, w_scale: Tensor, bias: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """``x[..., K] @ (weight[N, K] * w_scale)ᵀ + bias`` in ``dtype`` (weight: codes, w_scale: [N, 1] or [1, 1])."""
    return F.linear(x.to(dtype), (weight.float() * w_scale).to(dtype), bias)


def _act_quant():
    from . import act_quant  # act_quant imports this module; its references are needed only at run time
    return act_quant


def _triton():
    from . import triton_quant  # Triton is optional
    return triton_quant


def _allocate(x: Tensor, codes: str) -> tuple[Tensor, Tensor]:
    return (torch.empty(x.shape, dtype=CODE_DTYPES[codes], device=x.device),
            torch.empty(*x.shape[:-1], 1, dtype=torch.float32, device=x.device))


def _flat(x: Tensor) -> Tensor:
    """x: [..., K] -> contiguous [M, K]."""
    return x.reshape(-1, x.shape[-1]).contiguous()


def _reference(activation) -> tuple[Tensor, Tensor]:
    return activation.codes, activation.scale


def _quantized_like(x: Tensor, *args) -> tuple[Tensor, Tensor]:
    """The fake of every quantizer: codes like x (dtype of the ``codes`` argument, the last), scale [..., 1]."""
    codes = args[-1]
    return (x.new_empty(x.shape, dtype=CODE_DTYPES[codes]), x.new_empty(*x.shape[:-1], 1, dtype=torch.float32))


@_custom_op("quantize_rows", _quantized_like)
def quantize_rows(x: Tensor, codes: str) -> tuple[Tensor, Tensor]:
    """Per-token quantization of x [..., K] -> (codes [..., K], scale [..., 1])."""
    if not _act_quant().use_triton(x.device):
        return _reference(_act_quant().quantize_rows_reference(x, codes))
    codes_out, scale_out = _allocate(x, codes)
    _triton().quantize_rows(_flat(x), codes_out.view(-1, x.shape[-1]), scale_out.view(-1, 1), codes)
    return codes_out, scale_out


@_custom_op("norm_modulate_quant", _quantized_like)
def norm_modulate_quant(x: Tensor, shift: Tensor, scale: Tensor, eps: float, codes: str) -> tuple[Tensor, Tensor]:
    """Quantized ``LN(x) * (1 + scale) + shift``; x: [B, S, D]; shift, scale: [B, 1 or S, D]."""
    if not _act_quant().use_triton(x.device):
        reference = _act_quant()
        return _reference(reference.quantize_rows_reference(reference.norm_modulate_reference(x, shift, scale, eps),
                                                            codes))
    codes_out, scale_out = _allocate(x, codes)
    _triton().norm_modulate_quantize(x, shift, scale, eps, codes_out, scale_out, codes)
    return codes_out, scale_out


@_custom_op("layer_norm_quant", _quantized_like)
def layer_norm_quant(x: Tensor, weight: Tensor, bias: Tensor, eps: float, codes: str) -> tuple[Tensor, Tensor]:
    """Quantized affine LayerNorm; x: [..., D]; weight, bias: [D]."""
    if not _act_quant().use_triton(x.device):
        reference = _act_quant()
        return _reference(reference.quantize_rows_reference(reference.layer_norm_reference(x, weight, bias, eps),
                                                            codes))
    codes_out, scale_out = _allocate(x, codes)
    _triton().layer_norm_quantize(_flat(x), weight.contiguous(), bias.contiguous(), eps,
                                  codes_out.view(-1, x.shape[-1]), scale_out.view(-1, 1), codes)
    return codes_out, scale_out


@_custom_op("gelu_tanh_quant", _quantized_like)
def gelu_tanh_quant(x: Tensor, codes: str) -> tuple[Tensor, Tensor]:
    """Quantized ``GELU_tanh(x)`` (fp32 math); x: [..., F]."""
    if not _act_quant().use_triton(x.device):
        return _reference(_act_quant().quantize_rows_reference(F.gelu(x.float(), approximate="tanh"), codes))
    codes_out, scale_out = _allocate(x, codes)
    _triton().gelu_tanh_quantize(_flat(x), codes_out.view(-1, x.shape[-1]), scale_out.view(-1, 1), codes)
    return codes_out, scale_out


@_custom_op("rms_norm_quant", _quantized_like)
def rms_norm_quant(x: Tensor, weight: Tensor, eps: float, codes: str) -> tuple[Tensor, Tensor]:
    """Quantized T5 RMSNorm (half-precision roundings as `act_quant.rms_norm_reference`); x: [..., D]; weight: [D]."""
    if not _act_quant().use_triton(x.device):
        reference = _act_quant()
        return _reference(reference.quantize_rows_reference(reference.rms_norm_reference(x, weight, eps), codes))
    codes_out, scale_out = _allocate(x, codes)
    _triton().rms_norm_quantize(_flat(x), weight.contiguous(), eps, codes_out.view(-1, x.shape[-1]),
                                scale_out.view(-1, 1), codes)
    return codes_out, scale_out
