"""8-bit attention (SageAttention-class, no extra install): int8 Q·Kᵀ after mean smoothing, fp32 online softmax,
FP8 e4m3 or bf16 P·V, bf16 out.

`attention(q, k, v, option, kind)` is the entry point the ops factory calls; `selection.choose` decides what runs,
`op.sage8_attention` is the custom op, `triton_kernels` the kernels, `reference` their eager emulation and the fp32
reference, `configs` the launch table.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .op import sage8_attention
from .selection import EIGHT_BIT, SDPA, choose

# The attention option's PyTorch kernels (math stays allowed as the fallback where that kernel cannot run, e.g.
# flash on a CPU or for fp32 inputs).
SDPA_KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
# The loader's attention option: "auto", an SDPA kernel, or the 8-bit kernel (see `selection`).
ATTENTION_OPTIONS = ("auto", *SDPA_KERNELS, *EIGHT_BIT)
# "auto" on a CUDA GPU: PyTorch's SDPA with cuDNN's kernel first. PyTorch's own default order puts flash first, and
# that order is process state other code changes; measured on an H200 (bench/attention.py), flash ran Wan-14B
# self-attention at 0.63x of cuDNN (60 vs 38 ms per block at 480p, 324 vs 203 ms at 720p). Where cuDNN cannot run a
# call, the next kernel in this order does.
CUDA_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]
_SETS_PRIORITY = "set_priority" in inspect.signature(sdpa_kernel).parameters  # torch >= 2.6


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, option: str = "auto",
              kind: str = "self") -> torch.Tensor:
    """Softmax attention without mask. q: [B, H, Lq, d], k, v: [B, H, Lk, d] -> [B, H, Lq, d] in q's dtype (the
    8-bit kernel writes bf16). kind: "self" or "cross"."""
    choice = choose(option, kind, q.device, q.shape[-1])
    if choice in EIGHT_BIT.values():
        return sage8_attention(q, k, v, choice).to(q.dtype)
    if choice == SDPA:
        if q.device.type != "cuda" or not _SETS_PRIORITY:
            return F.scaled_dot_product_attention(q, k, v)
        with sdpa_kernel(CUDA_PRIORITY, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel([SDPA_KERNELS[choice], SDPBackend.MATH]):
        return F.scaled_dot_product_attention(q, k, v)
