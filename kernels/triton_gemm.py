"""Triton W8A8 GEMM with a fused dequantization epilogue: ``out = (A @ Wᵀ) * a_scale[m] * w_scale[n] + bias[n]``.

One kernel serves FP8 e4m3 (fp32 accumulation) and INT8 (int32 accumulation); the row × column scales, the
bias and the bf16 cast happen on the accumulator tile in registers. Imported only when Triton is installed;
`kernels.backends` is the entry point.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Tiles that fill an H100 at Wan shapes (M in the tens of thousands, N and K of 5120/13824), plus smaller
# ones for short inputs and other GPUs; the autotuner picks per (M, N, K).
TUNING_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=4, num_stages=4),
]


@triton.jit
def _scaled_gemm_kernel(a_ptr, w_ptr, a_scale_ptr, w_scale_ptr, bias_ptr, out_ptr, M, N, K,
                        stride_am, stride_wn, stride_om,
                        HAS_BIAS: tl.constexpr, INT8: tl.constexpr, EVEN_K: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped tile order: GROUP_M row tiles share each column tile while it is in L2.
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * tiles_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Out-of-range rows/columns read a valid row instead (wrapped); the store mask drops them.
    rows_a = (offs_m % M).to(tl.int64)
    rows_w = (offs_n % N).to(tl.int64)
    a_ptrs = a_ptr + rows_a[:, None] * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + rows_w[None, :] * stride_wn + offs_k[:, None]  # [BLOCK_K, BLOCK_N], K contiguous

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if INT8 else tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < left, other=0)
            w = tl.load(w_ptrs, mask=offs_k[:, None] < left, other=0)
        if INT8:
            acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, w, acc)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    in_m, in_n = offs_m < M, offs_n < N
    a_scale = tl.load(a_scale_ptr + offs_m, mask=in_m, other=0.0)
    w_scale = tl.load(w_scale_ptr + offs_n, mask=in_n, other=0.0)
    result = acc.to(tl.float32) * a_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        result += tl.load(bias_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=in_m[:, None] & in_n[None, :])


_tuned_kernel = triton.autotune(configs=TUNING_CONFIGS, key=["M", "N", "K", "INT8"])(_scaled_gemm_kernel)


def scaled_gemm(a: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None, out: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """out[M, N] = (a[M, K] @ weight[N, K]ᵀ) * a_scale[M, 1] * w_scale[1, N] + bias[N].

    a, weight: both float8_e4m3fn or both int8, unit stride along K; scales fp32 contiguous; out: bf16/fp16/fp32
    with unit stride along N. ``config`` (BLOCK_M/N/K, GROUP_M, num_warps, num_stages) skips the autotuner.
    """
    M, K = a.shape
    N = weight.shape[0]
    int8 = a.dtype == torch.int8
    args = (a, weight, a_scale, w_scale, bias if bias is not None else w_scale, out, M, N, K,
            a.stride(0), weight.stride(0), out.stride(0))
    if M == 0:
        return out
    if config is None:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
        # EVEN_K depends on the tile the tuner picks, so the tuned path only takes K that every tile divides.
        _tuned_kernel[grid](*args, HAS_BIAS=bias is not None, INT8=int8, EVEN_K=K % 128 == 0)
    else:
        tile = {key: config[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
        grid = (triton.cdiv(M, tile["BLOCK_M"]) * triton.cdiv(N, tile["BLOCK_N"]),)
        _scaled_gemm_kernel[grid](*args, HAS_BIAS=bias is not None, INT8=int8, EVEN_K=K % tile["BLOCK_K"] == 0,
                                  num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 2),
                                  **tile)
    return out
