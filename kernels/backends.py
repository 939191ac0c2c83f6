"""W8A8 GEMM backends and the choice among them.

Every backend computes ``out[M, N] = (a[M, K] @ w[N, K]ᵀ) * a_scale[M, 1] * w_scale[1, N] + bias`` in bf16:
- ``scaled_mm``: `torch._scaled_mm` row-wise FP8 (cuBLAS/CUTLASS), fast accumulation;
- ``triton``: our Triton kernel (FP8 or INT8; persistent with TMA on Hopper) with the scale/bias epilogue fused;
- ``int_mm``: `torch._int_mm` INT8 to int32, then scaling as separate PyTorch ops.
`choose(codes, requested, a, ...)` resolves "auto": the backends the device supports are timed once per shape
(M rounded up to a power of two) on the first real inputs (alternating, best of three rounds) and the fastest is
kept. Devices without them use the dequantizing fallback (``"dequant"``), which `QuantLinear` runs itself; an
explicitly requested backend that cannot run falls back the same way, with one warning per reason.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import torch

from ..errors import InvalidInputError
from .capability import MIN_CAPABILITY, compute_capability, m_bucket, native_gemm, triton_available

logger = logging.getLogger(__name__)

GemmFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
BACKENDS_FOR = {"fp8_e4m3": ("scaled_mm", "triton"), "int8": ("triton", "int_mm")}
BACKEND_NAMES = ("auto", "dequant", "scaled_mm", "triton", "int_mm")
OUT_DTYPE = torch.bfloat16

_fastest: dict[tuple, str] = {}
_warned: set[tuple[str, str, str]] = set()
_bias_fusion: dict[torch.device, bool] = {}


def _probe_bias_fusion(device: torch.device) -> bool:
    """Whether this build's row-wise `torch._scaled_mm` takes a bias on ``device``, tried on a 16 × 16 GEMM so that
    an error of a real call (out of memory, say) is never mistaken for the rejection."""
    codes = torch.zeros(16, 16, device=device).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(codes, codes.t(), scale_a=torch.ones(16, 1, device=device),
                         scale_b=torch.ones(1, 16, device=device), bias=torch.zeros(16, dtype=OUT_DTYPE, device=device),
                         out_dtype=OUT_DTYPE, use_fast_accum=True)
    except RuntimeError as error:
        logger.debug("torch._scaled_mm rejects a bias with row-wise scales (%s); adding it separately", error)
        return False
    return True


@torch.compiler.disable
def scaled_mm_fuses_bias(device: torch.device) -> bool:
    """`_probe_bias_fusion`, once per device."""
    if device not in _bias_fusion:
        if torch.cuda.is_current_stream_capturing():
            return False  # no probe inside a CUDA graph capture; adding the bias separately is always valid
        _bias_fusion[device] = _probe_bias_fusion(device)
    return _bias_fusion[device]


def scaled_mm(a, a_scale, weight, w_scale, bias):
    """FP8 row-wise `torch._scaled_mm`; the bias goes into the epilogue where the build supports it."""
    fuse_bias = bias is not None and scaled_mm_fuses_bias(a.device)
    out = torch._scaled_mm(a, weight.t(), scale_a=a_scale, scale_b=w_scale, bias=bias if fuse_bias else None,
                           out_dtype=OUT_DTYPE, use_fast_accum=True)
    return out if bias is None or fuse_bias else out.add_(bias)


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


def unusable_reason(codes: str, backend: str, device: torch.device,
                    shape: tuple[int, int, int] | None = None) -> str | None:
    """Why ``backend`` cannot run a ``codes`` GEMM on ``device`` (of (M, N, K) where ``shape`` is given), or None
    if it can. The reasons name no row count, so one warning covers every token count."""
    if backend == "dequant":
        return None
    if backend not in BACKENDS_FOR[codes]:
        return f"it does not take {codes} weights"
    if not native_gemm(codes, device):
        capability = compute_capability(device)
        where = f"SM {capability[0]}.{capability[1]}" if capability else device.type
        return (f"{where} has no {codes} tensor cores (needs CUDA SM >= "
                f"{'.'.join(map(str, MIN_CAPABILITY[codes]))})")
    if backend == "triton" and not triton_available():
        return "Triton is not installed"
    if shape is None:
        return None
    M, N, K = shape
    if backend == "scaled_mm" and (K % 16 or N % 16):
        return f"torch._scaled_mm needs K and N multiples of 16 (K={K}, N={N})"
    if backend == "int_mm" and (M <= 16 or K % 8 or N % 8):  # torch._int_mm's cuBLASLt constraints
        return f"torch._int_mm needs more than 16 rows and K, N multiples of 8 (K={K}, N={N})"
    return None


@torch.compiler.disable
def warn_fallback(codes: str, backend: str, reason: str) -> None:
    """Log, once per (codes, backend, reason), that an explicitly requested backend falls back to dequantizing."""
    if (codes, backend, reason) not in _warned:
        _warned.add((codes, backend, reason))
        logger.warning("W8A8 backend %r cannot run these %s layers (%s); they dequantize their weights instead "
                       "(slower)", backend, codes, reason)


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
        reason = unusable_reason(codes, requested, a.device, shape)
        if reason is None:
            return requested
        warn_fallback(codes, requested, reason)
        return "dequant"
    candidates = [name for name in BACKENDS_FOR[codes] if unusable_reason(codes, name, a.device, shape) is None]
    if len(candidates) <= 1:
        return candidates[0] if candidates else "dequant"
    key = (codes, m_bucket(shape[0]), shape[1], shape[2], a.device)
    if key not in _fastest:
        if torch.cuda.is_current_stream_capturing():
            return candidates[0]
        times = _fastest_of({name: functools.partial(GEMMS[name], a, a_scale, weight, w_scale, bias)
                             for name in candidates})
        _fastest[key] = min(times, key=times.get)
        logger.debug("W8A8 %s GEMM %s: %s -> %s", codes, shape,
                     ", ".join(f"{name} {ms:.3f} ms" for name, ms in times.items()), _fastest[key])
    return _fastest[key]
