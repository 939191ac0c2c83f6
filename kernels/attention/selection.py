"""Which attention runs a call: the loader's attention option, the call's kind and the device decide.

``auto``: the 8-bit kernel with FP8 P·V for self-attention on CUDA GPUs with FP8 tensor cores (SM >= 8.9) and
Triton; PyTorch's SDPA (cuDNN's kernel first on CUDA) for cross-attention, whose 512 text keys make it cheap, and
everywhere else. ``sage8`` / ``sage8_bf16pv``: the 8-bit kernel for every attention call, FP8 or bf16 P·V (FP8
falls back to bf16 P·V below SM 8.9; off CUDA the op runs its eager emulation). The SDPA names ask PyTorch for
that kernel. The choice is a constant for torch.compile, so it costs no graph break.
"""

from __future__ import annotations

import logging

import torch

from ..capability import compute_capability, triton_available
from .configs import HEAD_DIMS

logger = logging.getLogger(__name__)

EIGHT_BIT = {"sage8": "fp8", "sage8_bf16pv": "bf16"}
KINDS = ("self", "cross")
FP8_CAPABILITY = (8, 9)
SDPA = "sdpa"
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


@torch.compiler.assume_constant_result
def choose(option: str, kind: str, device: torch.device, head_dim: int) -> str:
    """"fp8" or "bf16" (the 8-bit kernel with that P·V), "sdpa" (cuDNN first on CUDA) or an SDPA kernel name, for
    an attention call of ``kind`` ("self" or "cross") with this head dim on ``device`` under ``option``."""
    if kind not in KINDS:
        raise ValueError(f"attention kind must be one of {KINDS}, not {kind!r}")
    if option != "auto" and option not in EIGHT_BIT:
        return option
    if option == "auto":
        # Measured on an H200 (bench/attention.py, bench/RESULTS.md): the 8-bit kernel with the table's config ran at
        # 0.88x (32,760 tokens) and 0.98x (75,600) of cuDNN's SDPA with FP8 P·V, so auto stays with SDPA until it wins.
        return SDPA
    capability = compute_capability(device)
    if head_dim not in HEAD_DIMS:
        _warn_once(f"the {option} attention takes head dims {HEAD_DIMS}, not {head_dim}; using PyTorch's SDPA")
        return SDPA
    pv = EIGHT_BIT[option]
    if device.type != "cuda" or not triton_available():
        _warn_once(f"the {option} attention runs its eager emulation on {device.type} without a CUDA GPU and "
                   "Triton (slow: meant for checks)")
    elif pv == "fp8" and capability < FP8_CAPABILITY:
        _warn_once(f"SM {capability[0]}.{capability[1]} has no FP8 tensor cores; sage8 attention computes P·V in "
                   "bf16 (sage8_bf16pv)")
        pv = "bf16"
    return pv
