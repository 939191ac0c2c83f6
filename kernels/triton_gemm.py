"""Triton W8A8 GEMM with a fused dequantization epilogue: ``out = (A @ Wᵀ) * a_scale[m] * w_scale[n] + bias[n]``.

One kernel serves FP8 e4m3 (fp32 accumulation) and INT8 (int32 accumulation); the row × column scales, the
bias and the bf16 cast happen on the accumulator tile in registers. On Hopper (SM 9.x) a persistent variant
moves the tiles with the tensor-memory accelerator (TMA descriptors: no address arithmetic or masks in the main
loop, bounds handled by the hardware) and keeps one program per SM walking the tiles in grouped order, with a tile
from a fixed table (`tma_config`); the portable tiled kernel is autotuned once per row bucket.
Imported only when Triton is installed; `kernels.backends` is the entry point.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .capability import compute_capability, device_index, m_bucket

# The autotuner picks a tile per (rows rounded up to a power of two, N, K, codes): ``M_BUCKET`` is a kernel argument
# only for this key, so a new token count in a known bucket does not tune again.
TUNING_KEY = ["M_BUCKET", "N", "K", "INT8"]
# Tiles that fill an H100 at Wan shapes (M in the tens of thousands, N and K of 5120/13824), plus smaller
# ones for short inputs and other GPUs.
TUNING_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=4, num_stages=4),
]


# Persistent TMA tiles for Hopper, a fixed table (no autotuner: the descriptors' block shapes must match the tile, and
# a fixed choice keeps the launch free of tuning hooks under `torch.compile`). 128 × 256 with 8 warps (two
# warpgroups, 64 rows each) is the largest tile whose fp32 accumulator fits the registers; on an H100 it won at every
# Wan shape in FP8 with 3 stages and group 8 (bench/RESULTS.md). Short or narrow GEMMs take 128 × 128, which
# leaves more tiles to spread over the SMs.
WIDE_TMA_TILE = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
NARROW_TMA_TILE = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 5}


def tma_config(M: int, N: int, K: int) -> dict:
    """The persistent kernel's tile for an (M, N, K) GEMM: `WIDE_TMA_TILE` where there are at least as many
    128 × 256 tiles as an H100 has SMs (132), else `NARROW_TMA_TILE`."""
    wide_tiles = triton.cdiv(M, 128) * triton.cdiv(N, 256)
    return WIDE_TMA_TILE if wide_tiles >= 132 else NARROW_TMA_TILE


@triton.jit
def _tile_coords(tile, tiles_m, tiles_n, GROUP_M: tl.constexpr):
    """Grouped tile order: GROUP_M row tiles share each column tile while it is in L2."""
    group_size = GROUP_M * tiles_n
    first_m = (tile // group_size) * GROUP_M
    rows_in_group = min(tiles_m - first_m, GROUP_M)
    return first_m + (tile % group_size) % rows_in_group, (tile % group_size) // rows_in_group


@triton.jit
def _scaled_gemm_tma_kernel(a_desc, w_desc, out_desc, a_scale_ptr, w_scale_ptr, bias_ptr, M, N, K, NUM_PROGRAMS,
                            HAS_BIAS: tl.constexpr, INT8: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    k_steps = tl.cdiv(K, BLOCK_K)
    # flatten: the K loops of consecutive tiles form one software pipeline, so the next tile's loads are in
    # flight while this tile's epilogue runs.
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, NUM_PROGRAMS, flatten=True):
        pid_m, pid_n = _tile_coords(tile, tiles_m, tiles_n, GROUP_M)
        off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if INT8 else tl.float32)
        for k in range(k_steps):
            a = a_desc.load([off_m, k * BLOCK_K])  # rows/columns past the edge read as zero
            w = w_desc.load([off_n, k * BLOCK_K])
            if INT8:
                acc = tl.dot(a, w.T, acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(a, w.T, acc)
        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        a_scale = tl.load(a_scale_ptr + offs_m, mask=offs_m < M, other=0.0)
        w_scale = tl.load(w_scale_ptr + offs_n, mask=offs_n < N, other=0.0)
        result = acc.to(tl.float32) * a_scale[:, None] * w_scale[None, :]
        if HAS_BIAS:
            result += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        out_desc.store([off_m, off_n], result.to(tl.bfloat16))  # the store is clipped at the edges


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def tma_usable(a: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether the persistent TMA kernel takes these operands: a Hopper GPU (compiled, not interpreted), bf16
    output, unit inner strides and the 16-byte alignment TMA needs for base addresses and row strides."""
    capability = compute_capability(a.device)
    if capability is None or capability[0] != 9 or out.dtype != torch.bfloat16:
        return False
    tensors = (a, weight, out)
    return (all(t.stride(-1) == 1 and t.data_ptr() % 16 == 0 for t in tensors)
            and all(t.stride(0) * t.element_size() % 16 == 0 for t in tensors))


@triton.jit
def _scaled_gemm_kernel(a_ptr, w_ptr, a_scale_ptr, w_scale_ptr, bias_ptr, out_ptr, M, N, K, M_BUCKET,
                        stride_am, stride_wn, stride_om,
                        HAS_BIAS: tl.constexpr, INT8: tl.constexpr, EVEN_K: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

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


_tuned_kernel = triton.autotune(configs=TUNING_CONFIGS, key=TUNING_KEY)(_scaled_gemm_kernel)


def scaled_gemm(a: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None, out: torch.Tensor, config: dict | None = None,
                persistent: bool | None = None) -> torch.Tensor:
    """out[M, N] = (a[M, K] @ weight[N, K]ᵀ) * a_scale[M, 1] * w_scale[1, N] + bias[N].

    a, weight: both float8_e4m3fn or both int8, unit stride along K; scales fp32 contiguous; out: bf16/fp16/fp32
    with unit stride along N. ``config`` (BLOCK_M/N/K, GROUP_M, num_warps, num_stages) runs the tiled kernel with
    that tile, skipping the autotuner. ``persistent``: run the persistent TMA kernel (None: wherever
    `tma_usable`; the benchmark sets it to compare both kernels).
    """
    M, K = a.shape
    N = weight.shape[0]
    int8 = a.dtype == torch.int8
    if M == 0:
        return out
    if config is None and (tma_usable(a, weight, out) if persistent is None else persistent):
        return _persistent_gemm(a, a_scale, weight, w_scale, bias, out)
    args = (a, weight, a_scale, w_scale, bias if bias is not None else w_scale, out, M, N, K, m_bucket(M),
            a.stride(0), weight.stride(0), out.stride(0))
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


def _persistent_gemm(a, a_scale, weight, w_scale, bias, out):
    M, K = a.shape
    N = weight.shape[0]
    config = tma_config(M, N, K)
    block_m, block_n, block_k = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    a_desc = TensorDescriptor.from_tensor(a, [block_m, block_k])
    w_desc = TensorDescriptor.from_tensor(weight, [block_n, block_k])
    out_desc = TensorDescriptor.from_tensor(out, [block_m, block_n])
    programs = _sm_count(device_index(a.device))
    grid = (min(programs, triton.cdiv(M, block_m) * triton.cdiv(N, block_n)),)
    _scaled_gemm_tma_kernel[grid](a_desc, w_desc, out_desc, a_scale, w_scale, bias if bias is not None else w_scale,
                                  M, N, K, programs, HAS_BIAS=bias is not None,
                                  INT8=a.dtype == torch.int8, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                                  GROUP_M=config["GROUP_M"], num_warps=config["num_warps"],
                                  num_stages=config["num_stages"])
    return out
