"""The operations factory the Wan DiT is built with.

The model never constructs a Linear, an attention call or an activation-producing op itself: it asks an
`Ops` object. `TorchOps` is the plain PyTorch reference; quantized and fused variants subclass it and are
injected at construction, so the network code stays the same for every precision.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .act_quant import layer_norm_reference, norm_modulate_reference, rms_norm_reference


class CastLinear(nn.Linear):
    """`nn.Linear` whose input is cast to the weight dtype, so bf16 weights take fp32 activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


# The attention choice of the loaders: PyTorch's SDPA picks its kernel ("auto"), or one kernel is asked for (math
# stays allowed as the fallback where that kernel cannot run, e.g. flash on a CPU or for fp32 inputs).
ATTENTION_BACKENDS = {
    "auto": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


class TorchOps:
    """Reference operations in plain PyTorch.

    Every method takes the layer's official name (``blocks.3.self_attn.q``) so a subclass can choose a
    different implementation per layer (e.g. keep the head in float while the blocks run FP8).
    ``attention_backend``: a key of `ATTENTION_BACKENDS`.
    """

    attention_backend = "auto"

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

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax attention without mask. q: [B, H, Lq, d], k/v: [B, H, Lk, d] -> [B, H, Lq, d]."""
        kernel = ATTENTION_BACKENDS[self.attention_backend]
        if kernel is None:
            return F.scaled_dot_product_attention(q, k, v)
        with sdpa_kernel([kernel, SDPBackend.MATH]):
            return F.scaled_dot_product_attention(q, k, v)
