"""Triton kernels behind `kernels.fused`: q/k RMSNorm (+ RoPE) + cast, and the in-place gated residual add.

`rms_norm_rope`: one program per token row; the row (all heads, D = H·d) is read once as even/odd halves of its
interleaved pairs, normalized in fp32 registers, rotated with the token's cos/sin row, rounded once and stored. Any
sequence length, head dim 64 or 128 (any even d), masks for the tail of the row. `gated_residual`: a 2-D grid of
(token row, column tile). Imported only when Triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .codes import HALF_DTYPES
from .triton_quant import _round_half

RESIDUAL_BLOCK = 1024


@triton.jit
def _rms_norm_rope_kernel(x_ptr, weight_ptr, cos_ptr, sin_ptr, out_ptr, tokens, D, eps,
                          stride_xb, stride_xs, stride_ob, stride_os,
                          HALF_HEAD: tl.constexpr, ROPE: tl.constexpr, ROUND_INPUT: tl.constexpr,
                          ROUND_OUTPUT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    batch, token = row // tokens, row % tokens
    pairs = tl.arange(0, BLOCK)
    mask = pairs < D // 2
    x_row = x_ptr + batch * stride_xb + token * stride_xs
    even = tl.load(x_row + 2 * pairs, mask=mask, other=0.0).to(tl.float32)
    odd = tl.load(x_row + 2 * pairs + 1, mask=mask, other=0.0).to(tl.float32)
    inv_rms = tl.rsqrt((tl.sum(even * even, axis=0) + tl.sum(odd * odd, axis=0)) / D + eps)
    even = even * inv_rms
    odd = odd * inv_rms
    if ROUND_INPUT:  # the official ``.type_as(x)`` before the weight
        even = _round_half(even, ROUND_INPUT)
        odd = _round_half(odd, ROUND_INPUT)
    even = even * tl.load(weight_ptr + 2 * pairs, mask=mask, other=0.0).to(tl.float32)
    odd = odd * tl.load(weight_ptr + 2 * pairs + 1, mask=mask, other=0.0).to(tl.float32)
    if ROPE:
        angle = token * HALF_HEAD + pairs % HALF_HEAD
        cos = tl.load(cos_ptr + angle, mask=mask, other=1.0)
        sin = tl.load(sin_ptr + angle, mask=mask, other=0.0)
        rotated_even = even * cos - odd * sin
        odd = even * sin + odd * cos
        even = rotated_even
    if ROUND_OUTPUT:  # rounded here: the CPU interpreter truncates float -> bf16 stores
        even = _round_half(even, ROUND_OUTPUT)
        odd = _round_half(odd, ROUND_OUTPUT)
    out_row = out_ptr + batch * stride_ob + token * stride_os
    tl.store(out_row + 2 * pairs, even.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_row + 2 * pairs + 1, odd.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_kernel(residual_ptr, update_ptr, gate_ptr, tokens, D,
                           stride_rb, stride_rs, stride_ub, stride_us, stride_gb, stride_gs,
                           HAS_GATE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    batch, token = row // tokens, row % tokens
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    residual_row = residual_ptr + batch * stride_rb + token * stride_rs + cols
    update = tl.load(update_ptr + batch * stride_ub + token * stride_us + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE:
        gate = tl.load(gate_ptr + batch * stride_gb + token * stride_gs + cols, mask=mask, other=0.0)
        update = update * gate.to(tl.float32)
    residual = tl.load(residual_row, mask=mask, other=0.0)
    tl.store(residual_row, (residual.to(tl.float32) + update).to(residual_ptr.dtype.element_ty), mask=mask)


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                  eps: float, out: torch.Tensor) -> None:
    """RMSNorm(x [B, L, D]) * weight [D], rotated with cos/sin [L, d/2] when given, into out [B, L, D]."""
    batch, tokens, width = x.shape
    if not batch * tokens:
        return
    x = _unit_stride(x)
    rope = cos is not None
    half_head = cos.shape[-1] if rope else 1
    block = triton.next_power_of_2(max(width // 2, 1))
    _rms_norm_rope_kernel[(batch * tokens,)](
        x, weight.contiguous(), cos.contiguous() if rope else weight, sin.contiguous() if rope else weight, out,
        tokens, width, eps, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        HALF_HEAD=half_head, ROPE=rope, ROUND_INPUT=HALF_DTYPES.get(x.dtype, 0),
        ROUND_OUTPUT=HALF_DTYPES.get(out.dtype, 0), BLOCK=block, num_warps=min(16, max(4, block // 512)))


def gated_residual(residual: torch.Tensor, update: torch.Tensor, gate: torch.Tensor | None) -> None:
    """residual [B, S, D] += gate [B, 1 or S, D] * update [B, S, D], in place (gate None: plain add)."""
    batch, tokens, width = residual.shape
    if not batch * tokens:
        return
    if residual.stride(-1) != 1:
        raise ValueError("the residual stream needs unit stride along its last dim")
    update = torch.broadcast_to(_unit_stride(update), residual.shape)
    gate_strides = (0, 0)
    if gate is not None:
        gate = torch.broadcast_to(_unit_stride(gate), residual.shape)
        gate_strides = (gate.stride(0), gate.stride(1))
    grid = (batch * tokens, triton.cdiv(width, RESIDUAL_BLOCK))
    _gated_residual_kernel[grid](
        residual, update, gate if gate is not None else update, tokens, width,
        residual.stride(0), residual.stride(1), update.stride(0), update.stride(1), *gate_strides,
        HAS_GATE=gate is not None, BLOCK=RESIDUAL_BLOCK, num_warps=4)
