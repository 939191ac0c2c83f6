"""W8A8 GEMM backends and the choice among them.

Every backend computes ``out[M, N] = (a[M, K] @ w[N, K]ᵀ) * a_scale[M, 1] * w_scale[1, N] + bias`` in bf16:
- ``scaled_mm``: `torch._scaled_mm` row-wise FP8 (cuBLAS/CUTLASS), fast accumulation;
- ``triton``: our Triton kernel (FP8 or INT8; persistent with TMA on Hopper) with the scale/bias epilogue fused;
- ``int_mm``: `torch._int_mm` INT8 to int32, then scaling as separate PyTorch ops.
`choose(codes, requested, a, ...)` resolves "auto": the backends the device supports are timed once per shape
on the first real inputs (alternating, best of three rounds) and the fastest is kept. Devices without them use
the dequantizing fallback (``"dequant"``), which `QuantLinear` runs itself.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import torch

from ..errors import InvalidInputError
from .capability import native_gemm, triton_available

logger = logging.getLogger(__name__)

GemmFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
BACKENDS_FOR = {"fp8_e4m3": ("scaled_mm", "triton"), "int8": ("triton", "int_mm")}
BACKEND_NAMES = ("auto", "dequant", "scaled_mm", "triton", "int_mm")
OUT_DTYPE = torch.bfloat16

_fastest: dict[tuple, str] = {}
_scaled_mm_takes_bias = True


def scaled_mm(a, a_scale, weight, w_scale, bias):
    """FP8 row-wise `torch._scaled_mm`; the bias goes into the epilogue where the build supports it."""
    global _scaled_mm_takes_bias
    if _scaled_mm_takes_bias and bias is not None:
        try:
            return torch._scaled_mm(a, weight.t(), scale_a=a_scale, scale_b=w_scale, bias=bias,
                                    out_dtype=OUT_DTYPE, use_fast_accum=True)
        except RuntimeError as error:
            logger.debug("torch._scaled_mm rejects a bias with row-wise scales (%s); adding it separately", error)
            _scaled_mm_takes_bias = False
    out = torch._scaled_mm(a, weight.t(), scale_a=a_scale, scale_b=w_scale, out_dtype=OUT_DTYPE,
                           use_fast_accum=True)
    return out if bias is None else out.add_(bias)


def triton_gemm(a, a_scale, weight, w_scale, bias, out: torch.Tensor | None = None):
    from .triton_gemm import scaled_gemm  # Triton is optional
    if out is None:
        out = torch.empty(a.shape[0], weight.shape[0], dtype=OUT_DTYPE, device=a.device)
    return scaled_gemm(a, a_scale, weight, w_scale, bias, out)


def int_mm(a, a_scale, weight, w_scale, bias):
    """`torch._int_mm` (int32 result) followed by the scaling in separate element-wise passes."""
    result = torch._int_mm(a, weight.t()).float().mul_(a_scale).mul_(w_scale)
    if bias is not None:
        result.add_(bias)
    return result.to(OUT_DTYPE)


GEMMS: dict[str, GemmFn] = {"scaled_mm": scaled_mm, "triton": triton_gemm, "int_mm": int_mm}


def check_name(backend: str) -> None:
    if backend not in BACKEND_NAMES:
        raise InvalidInputError(f"unknown W8A8 backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}")


def usable(codes: str, backend: str, device: torch.device, shape: tuple[int, int, int]) -> bool:
    """Whether ``backend`` can run a ``codes`` GEMM of (M, N, K) on ``device``."""
    if backend == "dequant":
        return True
    if backend not in BACKENDS_FOR[codes] or not native_gemm(codes, device):
        return False
    M, N, K = shape
    if backend == "triton":
        return triton_available()
    if backend == "scaled_mm":
        return K % 16 == 0 and N % 16 == 0
    return M > 16 and K % 8 == 0 and N % 8 == 0  # torch._int_mm's cuBLASLt constraints


def choices() -> dict[tuple, str]:
    """The per-shape choices "auto" has made: (codes, M bucket, N, K, device) -> backend."""
    return dict(_fastest)


def _time_ms(fn: Callable[[], torch.Tensor], repeats: int = 5) -> float:
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / repeats


def _fastest_of(gemms: dict[str, Callable[[], torch.Tensor]], rounds: int = 3) -> dict[str, float]:
    """Milliseconds per call of each GEMM: all are warmed up (compiled, autotuned) first, then timed in
    alternation, keeping each one's best round, so that clock changes after an autotuning burst do not
    favour whichever candidate ran first."""
    for fn in gemms.values():
        fn()
    best = {name: float("inf") for name in gemms}
    for _ in range(rounds):
        for name, fn in gemms.items():
            best[name] = min(best[name], _time_ms(fn))
    return best


@torch.compiler.disable
def choose(codes: str, requested: str, a: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor,
           w_scale: torch.Tensor, bias: torch.Tensor | None) -> str:
    """The backend for this GEMM: ``requested`` if usable, else for "auto" the fastest usable one (timed once per
    (codes, M rounded up to a power of two, N, K, device)), else "dequant"."""
    shape = (a.shape[0], weight.shape[0], a.shape[1])
    if requested != "auto":
        return requested if usable(codes, requested, a.device, shape) else "dequant"
    candidates = [name for name in BACKENDS_FOR[codes] if usable(codes, name, a.device, shape)]
    if len(candidates) <= 1:
        return candidates[0] if candidates else "dequant"
    key = (codes, 1 << max(shape[0] - 1, 0).bit_length(), shape[1], shape[2], a.device)
    if key not in _fastest:
        if torch.cuda.is_current_stream_capturing():
            return candidates[0]
        times = _fastest_of({name: functools.partial(GEMMS[name], a, a_scale, weight, w_scale, bias)
                             for name in candidates})
        _fastest[key] = min(times, key=times.get)
        logger.debug("W8A8 %s GEMM %s: %s -> %s", codes, shape,
                     ", ".join(f"{name} {ms:.3f} ms" for name, ms in times.items()), _fastest[key])
    return _fastest[key]
