"""Triton kernels that quantize activations per token, alone or fused with the op producing them.

One program per row: the producer (plain load, LayerNorm + modulation, affine LayerNorm, GELU-tanh or T5's
RMSNorm) is computed in fp32 registers, the row's amax gives the scale, and only the 8-bit codes and the fp32 scale
reach memory. Imported only when Triton is installed; `kernels.act_quant` is the entry point.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .codes import HALF_DTYPES, MIN_AMAX, QMAX

# Adding and removing 1.5 * 2**23 rounds an fp32 of magnitude < 2**22 to the nearest integer, ties to even
# (torch.round's rule), with plain arithmetic that the CPU interpreter runs too.
_ROUND_MAGIC = 12582912.0


@triton.jit
def _quantize_store(values, mask, codes_ptr, scale_ptr, cols,
                    QMAX_VALUE: tl.constexpr, INT8: tl.constexpr, AMAX_FLOOR: tl.constexpr,
                    MAGIC: tl.constexpr):
    amax = tl.max(tl.where(mask, tl.abs(values), 0.0), axis=0)
    scale = tl.maximum(amax, AMAX_FLOOR) / QMAX_VALUE
    scaled = tl.minimum(tl.maximum(values / scale, -QMAX_VALUE), QMAX_VALUE)
    if INT8:
        codes = ((scaled + MAGIC) - MAGIC).to(tl.int8)
    else:
        codes = scaled.to(tl.float8e4nv)
    tl.store(codes_ptr + cols, codes, mask=mask)
    tl.store(scale_ptr, scale)


@triton.jit
def _quantize_rows_kernel(x_ptr, codes_ptr, scale_ptr, K, stride_x, BLOCK: tl.constexpr,
                          QMAX_VALUE: tl.constexpr, INT8: tl.constexpr, AMAX_FLOOR: tl.constexpr,
                          MAGIC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < K
    values = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    _quantize_store(values, mask, codes_ptr + row * K, scale_ptr + row, cols, QMAX_VALUE, INT8, AMAX_FLOOR, MAGIC)


@triton.jit
def _gelu_tanh_quant_kernel(x_ptr, codes_ptr, scale_ptr, K, stride_x, BLOCK: tl.constexpr,
                            QMAX_VALUE: tl.constexpr, INT8: tl.constexpr, AMAX_FLOOR: tl.constexpr,
                            MAGIC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < K
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    # tanh(u) = 1 - 2 / (exp(2u) + 1), with u clamped where tanh is already ±1 in fp32 so exp stays finite.
    inner = tl.minimum(tl.maximum(0.7978845608028654 * (x + 0.044715 * x * x * x), -20.0), 20.0)
    tanh = 1.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0)
    values = 0.5 * x * (1.0 + tanh)
    _quantize_store(values, mask, codes_ptr + row * K, scale_ptr + row, cols, QMAX_VALUE, INT8, AMAX_FLOOR, MAGIC)


@triton.jit
def _round_half(values, HALF: tl.constexpr):
    """fp32 values rounded to bf16 (HALF = 1) or fp16 (HALF = 2), to nearest with ties to even, kept in fp32.
    bf16 rounds with integer arithmetic on the bits: the CPU interpreter truncates bf16 casts."""
    if HALF == 1:
        bits = values.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return values.to(tl.float16).to(tl.float32)


@triton.jit
def _rms_norm_quant_kernel(x_ptr, weight_ptr, codes_ptr, scale_ptr, K, stride_x, eps, HALF: tl.constexpr,
                           BLOCK: tl.constexpr, QMAX_VALUE: tl.constexpr, INT8: tl.constexpr,
                           AMAX_FLOOR: tl.constexpr, MAGIC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < K
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    normed = x * tl.rsqrt(tl.sum(x * x, axis=0) / K + eps)
    if HALF:
        # T5: the normalized row is cast to the half weight dtype, and the product with the weight is taken in
        # that dtype (exact in fp32 for two half operands, then rounded once).
        values = _round_half(_round_half(normed, HALF) * weight, HALF)
    else:
        values = normed * weight
    _quantize_store(values, mask, codes_ptr + row * K, scale_ptr + row, cols, QMAX_VALUE, INT8, AMAX_FLOOR, MAGIC)


@triton.jit
def _layer_norm_quant_kernel(x_ptr, weight_ptr, bias_ptr, codes_ptr, scale_ptr, K, stride_x, eps,
                             BLOCK: tl.constexpr, QMAX_VALUE: tl.constexpr, INT8: tl.constexpr,
                             AMAX_FLOOR: tl.constexpr, MAGIC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < K
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / K
    centered = tl.where(mask, x - mean, 0.0)
    normed = centered * (1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / K + eps))
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    _quantize_store(normed * weight + bias, mask, codes_ptr + row * K, scale_ptr + row, cols, QMAX_VALUE, INT8,
                    AMAX_FLOOR, MAGIC)


@triton.jit
def _norm_modulate_quant_kernel(x_ptr, shift_ptr, mod_scale_ptr, codes_ptr, scale_ptr, tokens, D, eps,
                                stride_xb, stride_xs, stride_shb, stride_shs, stride_scb, stride_scs,
                                BLOCK: tl.constexpr, QMAX_VALUE: tl.constexpr, INT8: tl.constexpr,
                                AMAX_FLOOR: tl.constexpr, MAGIC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    batch, token = row // tokens, row % tokens
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(x_ptr + batch * stride_xb + token * stride_xs + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / D
    centered = tl.where(mask, x - mean, 0.0)
    normed = centered * (1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / D + eps))
    shift = tl.load(shift_ptr + batch * stride_shb + token * stride_shs + cols, mask=mask, other=0.0)
    mod_scale = tl.load(mod_scale_ptr + batch * stride_scb + token * stride_scs + cols, mask=mask, other=0.0)
    values = normed * (1.0 + mod_scale.to(tl.float32)) + shift.to(tl.float32)
    _quantize_store(values, mask, codes_ptr + row * D, scale_ptr + row, cols, QMAX_VALUE, INT8, AMAX_FLOOR, MAGIC)


def _launch_args(width: int, codes: str) -> dict:
    block = triton.next_power_of_2(width)
    return dict(BLOCK=block, QMAX_VALUE=QMAX[codes], INT8=codes == "int8", AMAX_FLOOR=MIN_AMAX,
                MAGIC=_ROUND_MAGIC, num_warps=min(16, max(4, block // 1024)))


def quantize_rows(x: torch.Tensor, codes_out: torch.Tensor, scale_out: torch.Tensor, codes: str) -> None:
    """x: [M, K] (unit stride along K) -> codes_out [M, K], scale_out [M, 1]."""
    rows, width = x.shape
    if rows:
        _quantize_rows_kernel[(rows,)](x, codes_out, scale_out, width, x.stride(0), **_launch_args(width, codes))


def gelu_tanh_quantize(x: torch.Tensor, codes_out: torch.Tensor, scale_out: torch.Tensor, codes: str) -> None:
    """GELU-tanh of x [M, K] quantized into codes_out [M, K], scale_out [M, 1]."""
    rows, width = x.shape
    if rows:
        _gelu_tanh_quant_kernel[(rows,)](x, codes_out, scale_out, width, x.stride(0), **_launch_args(width, codes))


def rms_norm_quantize(x: torch.Tensor, weight: torch.Tensor, eps: float, codes_out: torch.Tensor,
                      scale_out: torch.Tensor, codes: str) -> None:
    """T5 RMSNorm(x [M, K]) * weight [K] (half-precision roundings as `act_quant.rms_norm_reference`) quantized
    into codes_out [M, K], scale_out [M, 1]."""
    rows, width = x.shape
    if rows:
        _rms_norm_quant_kernel[(rows,)](x, weight, codes_out, scale_out, width, x.stride(0), eps,
                                        HALF=HALF_DTYPES.get(weight.dtype, 0), **_launch_args(width, codes))


def layer_norm_quantize(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                        codes_out: torch.Tensor, scale_out: torch.Tensor, codes: str) -> None:
    """LayerNorm(x [M, K]) * weight [K] + bias [K] quantized into codes_out [M, K], scale_out [M, 1]."""
    rows, width = x.shape
    if rows:
        _layer_norm_quant_kernel[(rows,)](x, weight, bias, codes_out, scale_out, width, x.stride(0), eps,
                                          **_launch_args(width, codes))


def norm_modulate_quantize(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                           codes_out: torch.Tensor, scale_out: torch.Tensor, codes: str) -> None:
    """LN(x) * (1 + scale) + shift quantized; x: [B, S, D]; shift, scale: broadcastable to x (stride 1 on D);
    codes_out: [B, S, D] contiguous; scale_out: [B, S, 1]."""
    batch, tokens, width = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    shift, scale = (torch.broadcast_to(t if t.stride(-1) == 1 else t.contiguous(), x.shape) for t in (shift, scale))
    if batch * tokens:
        _norm_modulate_quant_kernel[(batch * tokens,)](
            x, shift, scale, codes_out, scale_out, tokens, width, eps,
            x.stride(0), x.stride(1), shift.stride(0), shift.stride(1), scale.stride(0), scale.stride(1),
            **_launch_args(width, codes))
