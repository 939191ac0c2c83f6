"""What the current device can run: FP8 tensor cores (SM >= 8.9), INT8 tensor cores (SM >= 8.0), Triton.

`native_gemm(codes, device)` answers whether those weight codes have a native W8A8 GEMM there; everything else runs the
dequantizing fallback. Triton is optional: the pack imports and runs without it.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

# Lowest compute capability with tensor-core GEMMs for the codes (FP8 e4m3: Ada/Hopper; INT8 IMMA: Ampere).
MIN_CAPABILITY = {"fp8_e4m3": (8, 9), "int8": (8, 0)}


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def device_index(device: torch.device) -> int:
    """The CUDA device index of ``device`` (the current device when it names none)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def compute_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, None for any other device."""
    if device.type != "cuda":
        return None
    return _cuda_capability(device_index(device))


def native_gemm(codes: str, device: torch.device) -> bool:
    """Whether ``device`` has tensor cores for W8A8 GEMMs with ``codes`` ("fp8_e4m3" or "int8")."""
    capability = compute_capability(device)
    return capability is not None and capability >= MIN_CAPABILITY[codes]


def m_bucket(rows: int) -> int:
    """The row count rounded up to a power of two: backend choices and Triton tile tuning are made once per bucket,
    not once per token count."""
    return 1 << max(rows - 1, 0).bit_length()
