"""Fused non-GEMM work of a Wan DiT block: q/k RMSNorm (+ RoPE) + cast for attention, and the gated residual add.

The single home of the RoPE math (`rope_tables`, `apply_rope`). Entry points, each a ``torch.library`` custom op
(namespace ``wan_express``, with a fake implementation, so `torch.compile` traces one opaque node) that runs the
Triton kernel of `triton_fused` on CUDA when Triton is installed and the eager reference here elsewhere:
- `qk_norm_rope(x, weight, cos, sin, eps, dtype)`: self-attention q or k. x: [B, L, D] projection output, one read;
  writes the normalized, rotated [B, L, D] tensor in ``dtype`` (a [B, L, H, d] view of it, transposed, is the
  [B, H, L, d] layout attention takes: no transposing copy).
- `qk_norm(x, weight, eps, dtype)`: the same without RoPE (cross-attention q, k and k_img).
- `gated_residual_(residual, update, gate)`: ``residual += gate * update`` in place (gate None: plain add).

Rounding, vs the official code (spec networks.md §1.7, §1.8):
- RMSNorm: sum of squares, rsqrt and the scaling in fp32; the normalized row is rounded to the input's dtype (bf16
  when the projection ran in bf16) before the fp32 weight multiplies it — the official ``.type_as(x) * weight``.
- RoPE: fp32 rotation with fp32 cos/sin tables built in fp64 (official: fp64 rotation, fp32 result; allowed, relative
  error ≤ 1e-5). The official code then casts q, k to bf16 for attention; here that cast is the kernel's one rounding
  of its output (round to nearest even), so the values equal the eager chain's up to fp32 summation order.
- Gated residual: ``gate * update`` and the add in fp32 on the fp32 residual stream, as the official code; the Triton
  kernel may contract them into one FMA (one fp32 rounding fewer).
"""

from __future__ import annotations

from typing import Optional

import torch

from .capability import triton_available

Tensor = torch.Tensor
# Imported as a stray top-level ``kernels`` package (a package probe run from the repository root) this module must
# not register the ops a second time.
_REGISTER = "." in (__package__ or "")


def precise_dtype(device: torch.device) -> torch.dtype:
    """fp64 where the device has it (the official sinusoid and RoPE tables are fp64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def rope_tables(grid: tuple[int, int, int], head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """3-D RoPE cos/sin for every token of an (f, h, w) grid: two [S, head_dim/2] fp32 tables (fp64 math).

    Pairs per axis: time gets ``head_dim/2 - 2*(head_dim/6)``, height and width ``head_dim/6`` each; every axis
    uses its own denominator (44, 42, 42 for 128-wide heads).
    """
    pairs = head_dim // 2
    axis_pairs = (pairs - 2 * (pairs // 3), pairs // 3, pairs // 3)
    dtype = precise_dtype(device)
    angles = []
    for axis, (size, n_pairs) in enumerate(zip(grid, axis_pairs)):
        inv_freq = 10000.0 ** (-torch.arange(n_pairs, device=device, dtype=dtype) * 2 / (2 * n_pairs))
        axis_angles = torch.arange(size, device=device, dtype=dtype)[:, None] * inv_freq[None, :]
        view = [1, 1, 1, n_pairs]
        view[axis] = size
        angles.append(axis_angles.view(view).expand(*grid, n_pairs))
    angles = torch.cat(angles, dim=-1).reshape(-1, pairs)
    return torch.cos(angles).float().contiguous(), torch.sin(angles).float().contiguous()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2j], x[2j+1]) in fp32. x: [B, S, H, d]; cos/sin: [S, d/2] -> fp32 [B, S, H, d]."""
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Wan's q/k RMSNorm over the last dim: normalized in fp32, rounded to x's dtype, times the fp32 weight -> fp32."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


def qk_norm_rope_reference(x: Tensor, weight: Tensor, cos: Tensor, sin: Tensor, eps: float,
                           dtype: torch.dtype) -> Tensor:
    """The eager chain: RMSNorm, RoPE (head dim ``2 * cos.shape[1]``), cast. x: [B, L, D] -> [B, L, D] ``dtype``."""
    heads = x.shape[-1] // (2 * cos.shape[-1])
    normed = rms_norm_reference(x, weight, eps).unflatten(-1, (heads, -1))
    return apply_rope(normed, cos, sin).flatten(-2).to(dtype)


def qk_norm_reference(x: Tensor, weight: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """RMSNorm then cast. x: [B, L, D] -> [B, L, D] ``dtype``."""
    return rms_norm_reference(x, weight, eps).to(dtype)


def gated_residual_reference_(residual: Tensor, update: Tensor, gate: Optional[Tensor]) -> None:
    """``residual += gate * update`` (fp32 product, then the add); gate broadcastable to residual."""
    residual.add_(update if gate is None else update * gate)


def _use_triton(x: Tensor) -> bool:
    return x.device.type == "cuda" and triton_available()


def _triton():
    from . import triton_fused  # Triton is optional
    return triton_fused


def _custom_op(name: str, mutates_args: tuple[str, ...] = ()):
    """Registers the decorated function as ``wan_express::<name>``; the fake is attached with ``.register_fake``."""
    def register(function):
        if not _REGISTER:
            function.register_fake = lambda fake: fake
            return function
        return torch.library.custom_op(f"wan_express::{name}", mutates_args=mutates_args)(function)
    return register


@_custom_op("qk_norm_rope")
def qk_norm_rope(x: Tensor, weight: Tensor, cos: Tensor, sin: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """RMSNorm + RoPE + cast of a self-attention q or k. x: [B, L, D] (unit stride on D); weight: [D] fp32;
    cos, sin: [L, d/2] fp32 -> [B, L, D] contiguous ``dtype``."""
    if not _use_triton(x):
        return qk_norm_rope_reference(x, weight, cos, sin, eps, dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    _triton().rms_norm_rope(x, weight, cos, sin, eps, out)
    return out


@qk_norm_rope.register_fake
def _(x, weight, cos, sin, eps, dtype):
    return x.new_empty(x.shape, dtype=dtype)


@_custom_op("qk_norm")
def qk_norm(x: Tensor, weight: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """RMSNorm + cast (cross-attention q, k). x: [B, L, D]; weight: [D] -> [B, L, D] contiguous ``dtype``."""
    if not _use_triton(x):
        return qk_norm_reference(x, weight, eps, dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    _triton().rms_norm_rope(x, weight, None, None, eps, out)
    return out


@qk_norm.register_fake
def _(x, weight, eps, dtype):
    return x.new_empty(x.shape, dtype=dtype)


@_custom_op("gated_residual_", mutates_args=("residual",))
def gated_residual_(residual: Tensor, update: Tensor, gate: Optional[Tensor]) -> None:
    """``residual += gate * update`` in place. residual: [B, S, D] fp32 (any batch/token strides, unit stride on D);
    update: [B, S, D]; gate: [B, 1 or S, D] or None."""
    if not _use_triton(residual):
        gated_residual_reference_(residual, update, gate)
        return
    _triton().gated_residual(residual, update, gate)


@gated_residual_.register_fake
def _(residual, update, gate):
    return None
