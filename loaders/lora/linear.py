"""Unmerged LoRA: a linear layer (float or quantized) plus additive side branches whose strength can change live.

`LoraLinear(base)` runs ``base(x)`` untouched, so a `QuantLinear` keeps its low-precision GEMM, and adds
``strength · scale · (x @ downᵀ) @ upᵀ`` per `LoraBranch` (or ``strength · x @ diffᵀ`` for a full-weight delta).
Each branch holds ``strength · scale`` as a 0-d tensor that `loaders.lora.attach` overwrites in place, so a strength
change needs no reload, and a compiled graph (which reads the tensor as an input) never runs a stale value.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels.quantized import QuantizedActivation, QuantLinear


def branch_dtype(base: nn.Module) -> torch.dtype:
    """Dtype a side branch computes in: the float weight's, or for a quantized layer the dtype its forward uses."""
    if isinstance(base, QuantLinear):
        return base.bias.dtype if base.bias is not None else torch.bfloat16
    return base.weight.dtype


class LoraBranch(nn.Module):
    """One additive branch: low rank (``down [r, in]``, ``up [out, r]``) or full (``up`` = diff ``[out, in]``, no down).

    Args:
        down, up: the factors, already in the compute dtype (buffers, not saved in the state dict).
        scale: alpha / rank (1 for a full diff).
        strength: the LoRA's strength now; `set_strength` changes it.
        index: the LoRA's place in the stack of its owner.
    """

    def __init__(self, down: torch.Tensor | None, up: torch.Tensor, scale: float, strength: float, index: int):
        super().__init__()
        self.register_buffer("down", down, persistent=False)
        self.register_buffer("up", up, persistent=False)
        self.register_buffer("factor", torch.tensor(strength * scale, dtype=torch.float32, device=up.device),
                             persistent=False)
        self.scale, self.index = scale, index

    @torch.no_grad()
    def set_strength(self, strength: float) -> None:
        """In place: the tensor stays the one the model (and any compiled graph of it) holds."""
        self.factor.fill_(strength * self.scale)

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        """x: [..., in] -> [..., out] in the branch dtype, without the strength factor.

        `loaders.lora.attach` feeds branched layers float inputs (the fused LayerNorm / GELU quantization is turned
        off in front of them); a `QuantizedActivation` from any other producer is dequantized, which adds its
        rounding to the low-rank term (measured: 5% of the LoRA's contribution for FP8, 2% for INT8).
        """
        x = x.dequantize(self.up.dtype) if isinstance(x, QuantizedActivation) else x.to(self.up.dtype)
        if self.down is not None:
            x = F.linear(x, self.down)
        return F.linear(x, self.up)


class LoraLinear(nn.Module):
    """``base(x) + Σ factor_i · branch_i(x)``; the base's weights (and their state-dict names under ``base.``) stay."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.branches = nn.ModuleList()

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        """x: [..., in] -> [..., out] in the base's output dtype."""
        out = self.base(x)
        for branch in self.branches:
            out = out + (branch.factor * branch(x)).to(out.dtype)
        return out
