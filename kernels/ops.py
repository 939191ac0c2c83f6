"""The operations factory the Wan DiT is built with.

The model never constructs a Linear, an attention call or an activation-producing op itself: it asks an
`Ops` object. `TorchOps` is the plain PyTorch reference; quantized and fused variants subclass it and are
injected at construction, so the network code stays the same for every precision. The fused non-GEMM ops
(`kernels.fused`: q/k RMSNorm + RoPE + cast, the gated residual) are shared by every factory.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import attention as attention_kernels
from . import fused
from .act_quant import layer_norm_reference, norm_modulate_reference, rms_norm_reference


class CastLinear(nn.Linear):
    """`nn.Linear` whose input is cast to the weight dtype, so bf16 weights take fp32 activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


# The attention option of the loaders (see `kernels.attention.selection`).
ATTENTION_BACKENDS = attention_kernels.ATTENTION_OPTIONS


class TorchOps:
    """Reference operations in plain PyTorch.

    Every method takes the layer's official name (``blocks.3.self_attn.q``) so a subclass can choose a
    different implementation per layer (e.g. keep the head in float while the blocks run FP8).
    ``attention_backend``: one of `ATTENTION_BACKENDS`. ``ffn_chunk_tokens``: run the FFN (its LayerNorm +
    modulation, both linears, the GELU and the gated residual) over slices of this many tokens when the sequence is
    longer, which bounds its [tokens, ffn_dim] intermediates (the block's peak at Wan shapes); 0: one pass. Every op
    of the FFN works row by row, so the result is bit-identical to one pass wherever the GEMM library computes a row
    the same way at every row count (the CPU one does for multiples of 16 rows; elsewhere a different kernel choice
    for the smaller GEMMs changes only their rounding).
    """

    attention_backend = "auto"
    ffn_chunk_tokens = 0

    def __init__(self, ffn_chunk_tokens: int = 0):
        self.ffn_chunk_tokens = ffn_chunk_tokens

    def linear(self, in_features: int, out_features: int, *, name: str, bias: bool = True) -> nn.Module:
        """A Linear layer; its state-dict keys must be ``weight`` (+ ``bias``) plus any scales it declares."""
        return CastLinear(in_features, out_features, bias=bias)

    def norm_modulate(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                      *, name: str) -> torch.Tensor:
        """``LN(x) * (1 + scale) + shift`` with a non-affine LayerNorm, computed in fp32.

        x: [B, S, D] fp32 residual stream; shift, scale: broadcastable to x. The result feeds a Linear
        (``name`` is that Linear), which is where a fused kernel would quantize it.
        """
        return norm_modulate_reference(x, shift, scale, eps)

    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                   *, name: str) -> torch.Tensor:
        """Affine LayerNorm in fp32 (the cross-attention pre-norm); ``name`` is the Linear it feeds."""
        return layer_norm_reference(x, weight, bias, eps)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, *, name: str) -> torch.Tensor:
        """T5 RMSNorm (spec networks.md §2.2): ``x * rsqrt(mean(x²) + eps)`` with the mean in fp32, cast to the
        weight dtype when that is half precision, times the weight.

        x: [..., D]; weight: [D]. ``name`` is the Linear the result feeds (the first of those sharing it), or the
        norm's own name where it feeds none.
        """
        return rms_norm_reference(x, weight, eps)

    # The fused ops below feed attention or the residual, never a Linear, so no factory varies them per layer: they
    # take no layer name (and a compiled block reads no per-block string).
    def qk_norm_rope(self, x: torch.Tensor, weight: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                     eps: float, dtype: torch.dtype) -> torch.Tensor:
        """Self-attention q or k: Wan's RMSNorm over all heads, RoPE, cast to ``dtype`` in one pass
        (`fused.qk_norm_rope`). x: [B, L, D] projection output; weight: [D]; rope: cos, sin [L, d/2] -> [B, L, D]."""
        return fused.qk_norm_rope(x, weight, *rope, eps, dtype)

    def qk_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
        """Cross-attention q or k: Wan's RMSNorm then cast to ``dtype`` (`fused.qk_norm`). x: [B, L, D] -> same."""
        return fused.qk_norm(x, weight, eps, dtype)

    def gated_residual_(self, residual: torch.Tensor, update: torch.Tensor, gate: torch.Tensor | None) -> None:
        """``residual += gate * update`` in place (`fused.gated_residual_`). residual: [B, S, D] fp32 stream
        (slices of it included); update: [B, S, D]; gate: [B, 1 or S, D] or None for an ungated add."""
        fused.gated_residual_(residual, update, gate)

    def token_chunks(self, tokens: int) -> list[slice]:
        """The token slices the FFN runs over (``ffn_chunk_tokens``): one slice unless the sequence is longer."""
        step = self.ffn_chunk_tokens if 0 < self.ffn_chunk_tokens < tokens else tokens
        return [slice(start, min(start + step, tokens)) for start in range(0, tokens, max(step, 1))]

    def gelu_tanh(self, *, name: str) -> nn.Module:
        """The FFN activation; ``name`` is the Linear that consumes its output."""
        return nn.GELU(approximate="tanh")

    def float_inputs(self, names: Iterable[str]) -> "TorchOps":
        """These operations, with the producers named in ``names`` (the ``name`` given to `norm_modulate`,
        `layer_norm`, `rms_norm` or `gelu_tanh`) always returning float: for a consumer that needs its exact input
        rather than a fused quantization of it (a LoRA side branch). The reference never quantizes: itself."""
        return self

    def for_block(self, prefix: str) -> "TorchOps":
        """These operations as a block's forward calls them: ``name`` relative to the block ``prefix`` (``ffn.0`` in
        ``blocks.3``), so that the forward reads no per-block string (a compiled block then serves every block).
        The reference ignores names: itself."""
        return self

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str = "self") -> torch.Tensor:
        """Softmax attention without mask. q: [B, H, Lq, d], k/v: [B, H, Lk, d] -> [B, H, Lq, d]; kind: "self"
        or "cross" (the "auto" option treats them differently)."""
        return attention_kernels.attention(q, k, v, self.attention_backend, kind)
