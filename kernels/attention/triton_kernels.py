"""Triton kernels of the 8-bit attention: input quantization and the attention forward.

`sage8(q, k, v, pv, config)` runs them: `_channel_stats_kernel` (per-channel means, and V's centred amax),
`_quantize_qk_kernel` (int8 codes with one scale per tile of rows; for K also the per-key bias that Q's mean
contributes), `_quantize_v_kernel` (e4m3 codes of the centred V, stored transposed so that P·V reads V K-major) and
`_attention_kernel` (online softmax in the log2 domain, fp32 accumulation per KV block). `reference.emulate` is the
same arithmetic in PyTorch. Imported only when Triton is installed.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..codes import MIN_AMAX, QMAX
from .configs import AttentionConfig
from .reference import LOG2E, P_SCALE

STATS_ROWS = 128  # tokens per step of the statistics kernel

# `_round_e4m3` and `_round_bf16` round fp32 to nearest-even with e4m3's 3 or bf16's 7 mantissa bits by integer
# arithmetic on the bits (20 or 16 bits dropped), so that the cast after them is exact in the CPU interpreter too
# (which mis-rounds fp32 -> e4m3 when the rounding carries into the exponent, and truncates bf16 casts). V's
# quantization always uses it (one pass); P's only under the interpreter (the hot loop, where the GPU's cast
# already rounds to nearest-even).


@triton.jit
def _round_e4m3(values):
    bits = values.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _round_bf16(values):
    bits = values.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _channel_stats_kernel(x_ptr, mean_ptr, amax_ptr, L, H, stride_b, stride_h, stride_l,
                          D: tl.constexpr, ROWS: tl.constexpr, AMAX: tl.constexpr):
    """Per (batch, head): the mean over tokens of each channel, and with AMAX the largest |x - mean|."""
    bh = tl.program_id(0)
    base = x_ptr + (bh // H).to(tl.int64) * stride_b + (bh % H).to(tl.int64) * stride_h
    channels = tl.arange(0, D)
    total = tl.zeros([D], dtype=tl.float32)
    for start in range(0, L, ROWS):
        rows = start + tl.arange(0, ROWS)
        tile = tl.load(base + rows[:, None].to(tl.int64) * stride_l + channels[None, :], mask=rows[:, None] < L,
                       other=0.0).to(tl.float32)
        total += tl.sum(tile, axis=0)
    mean = total / L
    tl.store(mean_ptr + bh * D + channels, mean)
    if AMAX:
        amax = tl.zeros([D], dtype=tl.float32)
        for start in range(0, L, ROWS):
            rows = start + tl.arange(0, ROWS)
            inside = rows[:, None] < L
            tile = tl.load(base + rows[:, None].to(tl.int64) * stride_l + channels[None, :], mask=inside,
                           other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.where(inside, tl.abs(tile - mean[None, :]), 0.0), axis=0))
        tl.store(amax_ptr + bh * D + channels, amax)


@triton.jit
def _quantize_qk_kernel(x_ptr, mean_ptr, codes_ptr, scale_ptr, q_mean_ptr, bias_ptr, L, H, stride_b, stride_h,
                        stride_l, extra_scale, bias_scale, D: tl.constexpr, BLOCK: tl.constexpr,
                        BIAS: tl.constexpr, AMAX_FLOOR: tl.constexpr):
    """One tile of BLOCK rows minus the channel means -> int8 codes [B*H, L padded to BLOCK, D] (zero past L) and
    one scale (times ``extra_scale``); with BIAS also ``bias_scale * q_mean · row`` per row (K's tiles), -inf past
    L so that padding keys get no weight without a mask in the attention loop."""
    block, bh = tl.program_id(0), tl.program_id(1)
    rows = block * BLOCK + tl.arange(0, BLOCK)
    channels = tl.arange(0, D)
    inside = rows[:, None] < L
    base = x_ptr + (bh // H).to(tl.int64) * stride_b + (bh % H).to(tl.int64) * stride_h
    tile = tl.load(base + rows[:, None].to(tl.int64) * stride_l + channels[None, :], mask=inside, other=0.0)
    centred = tl.where(inside, tile.to(tl.float32) - tl.load(mean_ptr + bh * D + channels)[None, :], 0.0)
    scale = tl.maximum(tl.max(tl.max(tl.abs(centred), axis=1), axis=0), AMAX_FLOOR) / 127.0
    # Adding and removing 1.5 * 2**23 rounds to the nearest integer with ties to even (torch.round's rule).
    codes = ((centred / scale + 12582912.0) - 12582912.0).to(tl.int8)
    out_rows = bh.to(tl.int64) * tl.num_programs(0) * BLOCK + rows
    tl.store(codes_ptr + out_rows[:, None] * D + channels[None, :], codes)
    tl.store(scale_ptr + bh * tl.num_programs(0) + block, scale * extra_scale)
    if BIAS:
        q_mean = tl.load(q_mean_ptr + bh * D + channels)
        bias = tl.sum(centred * q_mean[None, :], axis=1) * bias_scale
        tl.store(bias_ptr + out_rows, tl.where(rows < L, bias, float("-inf")))


@triton.jit
def _quantize_v_kernel(v_ptr, mean_ptr, scale_ptr, codes_ptr, L, L_PAD, H, stride_b, stride_h, stride_l,
                       D: tl.constexpr, BLOCK: tl.constexpr):
    """(v - mean) / scale per channel as e4m3 codes, stored transposed: [B*H, D, L_PAD] (zero past L)."""
    block, bh = tl.program_id(0), tl.program_id(1)
    rows = block * BLOCK + tl.arange(0, BLOCK)
    channels = tl.arange(0, D)
    inside = rows[:, None] < L
    base = v_ptr + (bh // H).to(tl.int64) * stride_b + (bh % H).to(tl.int64) * stride_h
    tile = tl.load(base + rows[:, None].to(tl.int64) * stride_l + channels[None, :], mask=inside, other=0.0)
    scaled = (tile.to(tl.float32) - tl.load(mean_ptr + bh * D + channels)[None, :]) \
        / tl.load(scale_ptr + bh * D + channels)[None, :]
    scaled = tl.where(inside, tl.minimum(tl.maximum(scaled, -448.0), 448.0), 0.0)
    codes = _round_e4m3(scaled).to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    out = codes_ptr + bh.to(tl.int64) * D * L_PAD + channels[None, :] * L_PAD + rows[:, None]
    tl.store(out, codes)


@triton.jit
def _attention_kernel(q_ptr, q_scale_ptr, k_ptr, k_scale_ptr, bias_ptr, v_ptr, v_scale_ptr, v_mean_ptr, out_ptr,
                      Lq, Lk, H, stride_vb, stride_vh, stride_v_key, stride_v_channel, stride_ob, stride_oh,
                      stride_ol,
                      D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP8_PV: tl.constexpr,
                      P_MAX: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, SOFT_ROUND: tl.constexpr):
    """One tile of BLOCK_M queries of one (batch, head) against all keys. Scores come out of the int8 GEMM in the
    log2 domain (the softmax scale is in Q's scales), so P = exp2(s - running max). SOFT_ROUND rounds P with
    integer arithmetic before its cast (for the CPU interpreter; the GPU's cast rounds to nearest-even itself)."""
    block, bh = tl.program_id(0), tl.program_id(1)
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    channels = tl.arange(0, D)
    # Q, K and the key bias are padded to whole tiles (K's bias is -inf past Lk): no masks but on a bf16 V.
    q = tl.load(q_ptr + (bh.to(tl.int64) * tl.num_programs(0) * BLOCK_M + rows[:, None]) * D + channels[None, :])
    q_scale = tl.load(q_scale_ptr + bh * tl.num_programs(0) + block)
    k_blocks = tl.cdiv(Lk, BLOCK_N)
    k_base = k_ptr + bh.to(tl.int64) * k_blocks * BLOCK_N * D
    bias_base = bias_ptr + bh.to(tl.int64) * k_blocks * BLOCK_N
    v_base = v_ptr + (bh // H).to(tl.int64) * stride_vb + (bh % H).to(tl.int64) * stride_vh
    running_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for step in tl.range(0, k_blocks, warp_specialize=WARP_SPECIALIZE):
        keys = step * BLOCK_N + tl.arange(0, BLOCK_N)
        k_t = tl.load(k_base + keys[None, :].to(tl.int64) * D + channels[:, None])
        scores = tl.dot(q, k_t, out_dtype=tl.int32).to(tl.float32)
        k_scale = tl.load(k_scale_ptr + bh * k_blocks + step)
        scores = scores * (q_scale * k_scale) + tl.load(bias_base + keys)[None, :]
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        alpha = tl.exp2(running_max - new_max)
        p = tl.exp2(scores - new_max[:, None])
        running_sum = running_sum * alpha + tl.sum(p, axis=1)
        if FP8_PV:
            v_t = tl.load(v_base + channels[:, None] * stride_v_channel + keys[None, :].to(tl.int64) * stride_v_key)
            p_scaled = p * P_MAX
            if SOFT_ROUND:
                p_scaled = _round_e4m3(p_scaled)
            p_codes = p_scaled.to(tl.float8e4nv)
            block_pv = tl.dot(p_codes, tl.trans(v_t.to(tl.float8e4nv, bitcast=True)), out_dtype=tl.float32)
        else:
            v = tl.load(v_base + keys[:, None].to(tl.int64) * stride_v_key + channels[None, :] * stride_v_channel,
                        mask=keys[:, None] < Lk, other=0.0)
            if SOFT_ROUND:
                p = _round_bf16(p)
            block_pv = tl.dot(p.to(tl.bfloat16), v, out_dtype=tl.float32)
        # The block's P·V is summed in fp32 outside the MMA (two-level accumulation).
        acc = acc * alpha[:, None] + block_pv
        running_max = new_max
    out = acc / running_sum[:, None]
    if FP8_PV:
        out = out * (tl.load(v_scale_ptr + bh * D + channels) / P_MAX)[None, :] \
            + tl.load(v_mean_ptr + bh * D + channels)[None, :]
    o_base = out_ptr + (bh // H).to(tl.int64) * stride_ob + (bh % H).to(tl.int64) * stride_oh
    tl.store(o_base + rows[:, None].to(tl.int64) * stride_ol + channels[None, :], out.to(tl.bfloat16),
             mask=rows[:, None] < Lq)


def _strided(x: torch.Tensor) -> torch.Tensor:
    """x: [B, H, L, d] with unit channel stride (a transposed [B, L, H, d] projection qualifies) or made so."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _channel_stats(x: torch.Tensor, amax: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    B, H, L, D = x.shape
    mean = torch.empty(B, H, D, dtype=torch.float32, device=x.device)
    centred_amax = torch.empty_like(mean) if amax else None
    _channel_stats_kernel[(B * H,)](x, mean, centred_amax if amax else mean, L, H, x.stride(0), x.stride(1),
                                    x.stride(2), D=D, ROWS=STATS_ROWS, AMAX=amax)
    return mean, centred_amax


def _quantize_qk(x: torch.Tensor, mean: torch.Tensor, block: int, extra_scale: float,
                 q_mean: torch.Tensor | None = None, bias_scale: float = 1.0):
    B, H, L, D = x.shape
    blocks = triton.cdiv(L, block)
    codes = torch.empty(B, H, blocks * block, D, dtype=torch.int8, device=x.device)
    scale = torch.empty(B, H, blocks, dtype=torch.float32, device=x.device)
    bias = torch.empty(B, H, blocks * block, dtype=torch.float32, device=x.device) if q_mean is not None else None
    _quantize_qk_kernel[(blocks, B * H)](x, mean, codes, scale, q_mean if bias is not None else mean,
                                         bias if bias is not None else scale, L, H, x.stride(0), x.stride(1),
                                         x.stride(2), extra_scale, bias_scale, D=D, BLOCK=block,
                                         BIAS=bias is not None, AMAX_FLOOR=MIN_AMAX)
    return codes, scale, bias


def _quantize_v(v: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """V -> e4m3 codes [B, H, D, L padded to whole blocks] (as uint8), per-channel scale and mean [B, H, D]."""
    B, H, L, D = v.shape
    mean, amax = _channel_stats(v, amax=True)
    scale = amax.clamp_min_(MIN_AMAX).div_(QMAX["fp8_e4m3"])
    padded = triton.cdiv(L, block) * block
    codes = torch.empty(B, H, D, padded, dtype=torch.uint8, device=v.device)
    _quantize_v_kernel[(triton.cdiv(L, block), B * H)](v, mean, scale, codes, L, padded, H, v.stride(0),
                                                        v.stride(1), v.stride(2), D=D, BLOCK=block)
    return codes, scale, mean


def sage8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv: str, config: AttentionConfig,
          soft_round: bool = False) -> torch.Tensor:
    """8-bit attention. q: [B, H, Lq, d], k, v: [B, H, Lk, d] (d 64 or 128; any strides with unit channel stride)
    -> [B, H, Lq, d] bf16, a transposed view of a contiguous [B, Lq, H, d] tensor (what the DiT flattens next).
    pv: "fp8" (e4m3 P·V) or "bf16". soft_round: round P in integer arithmetic (under the CPU interpreter)."""
    q, k, v = _strided(q), _strided(k), _strided(v)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    softmax_scale = LOG2E / math.sqrt(D)
    q_mean, _ = _channel_stats(q, amax=False)
    k_mean, _ = _channel_stats(k, amax=False)
    q_codes, q_scale, _ = _quantize_qk(q, q_mean, config.block_m, softmax_scale)
    k_codes, k_scale, key_bias = _quantize_qk(k, k_mean, config.block_n, 1.0, q_mean, softmax_scale)
    if pv == "fp8":
        v_in, v_scale, v_mean = _quantize_v(v, config.block_n)
        v_strides = (v_in.stride(0), v_in.stride(1), 1, v_in.stride(2))
    else:
        v_in, v_scale, v_mean = v, q_scale, q_scale  # the scale and mean are not read without FP8 P·V
        v_strides = (v.stride(0), v.stride(1), v.stride(2), 1)
    out = torch.empty(B, Lq, H, D, dtype=torch.bfloat16, device=q.device).transpose(1, 2)
    _attention_kernel[(triton.cdiv(Lq, config.block_m), B * H)](
        q_codes, q_scale, k_codes, k_scale, key_bias, v_in, v_scale, v_mean, out, Lq, Lk, H, *v_strides,
        out.stride(0), out.stride(1), out.stride(2), D=D, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        FP8_PV=pv == "fp8", P_MAX=P_SCALE, WARP_SPECIALIZE=config.warp_specialize, SOFT_ROUND=soft_round,
        num_warps=config.num_warps, num_stages=config.num_stages)
    return out
