"""The 8-bit attention as a PyTorch custom op, ``torch.ops.wan_express.sage8_attention``, so that torch.compile
traces it as one node (its fake implementation gives the output's shape and strides).

On CUDA with Triton the op runs `triton_kernels.sage8`; anywhere else it runs `reference.emulate`, the same
arithmetic in PyTorch (slow: for checks on a CPU). Launch parameters come from `configs.config_for`.
"""

from __future__ import annotations

import torch

from ..capability import compute_capability, triton_available
from .configs import AttentionConfig, config_for
from .reference import PV_MODES, emulate


def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv: str,
        config: AttentionConfig | None = None) -> torch.Tensor:
    """The attention with ``config`` (default: the table's), on the kernel where it can run. Shapes as
    `sage8_attention`."""
    if pv not in PV_MODES:
        raise ValueError(f"pv must be one of {PV_MODES}, not {pv!r}")
    config = config or config_for(q.shape[-1], compute_capability(q.device))
    if q.device.type == "cuda" and triton_available():
        from .triton_kernels import sage8  # Triton is optional
        return sage8(q, k, v, pv, config)
    return _output_like(q).copy_(emulate(q, k, v, pv, config.block_m, config.block_n))


def _output_like(q: torch.Tensor) -> torch.Tensor:
    B, H, Lq, d = q.shape
    return torch.empty(B, Lq, H, d, dtype=torch.bfloat16, device=q.device).transpose(1, 2)


@torch.library.custom_op("wan_express::sage8_attention", mutates_args=())
def sage8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv: str) -> torch.Tensor:
    """Non-causal softmax attention with int8 Q·Kᵀ and FP8 (pv="fp8") or bf16 (pv="bf16") P·V.

    q: [B, H, Lq, d], k, v: [B, H, Lk, d] with d 64 or 128 -> [B, H, Lq, d] bf16 (strides of a transposed
    [B, Lq, H, d] tensor)."""
    return run(q, k, v, pv)


@sage8_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv: str) -> torch.Tensor:
    return _output_like(q)
