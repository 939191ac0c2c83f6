"""Eager emulation of the 8-bit attention kernels' arithmetic, and the fp32 attention they are measured against.

`emulate(q, k, v, pv=...)` runs exactly the quantization and online-softmax steps of `triton_attention` in PyTorch
(on any device, CPU included): Q and K minus their per-channel means as int8 with one scale per block of rows,
scores in the log2 domain with ``log2(e) / sqrt(d)`` folded into Q's scale plus the per-key term Q's mean
contributes, a running max and sum per row updated
once per KV block, and P·V either in FP8 e4m3 (P times 448, V minus its per-channel mean over a per-channel scale,
the mean added back after normalising) or with P rounded to bf16 and V as it is. `quantize_inputs` is the common
first step, which the Triton quantization kernels reproduce.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..codes import MIN_AMAX, QMAX

LOG2E = 1.4426950408889634
PV_MODES = ("fp8", "bf16")
# P lies in [0, 1] (its row max is subtracted); it is multiplied by this before the e4m3 cast, the top of the range.
P_SCALE = QMAX["fp8_e4m3"]


@dataclasses.dataclass
class QuantizedInputs:
    """The kernel's inputs. q_codes: [B, H, Lq, d] int8 of Q minus its per-channel mean q_mean, q_scale:
    [B, H, ceil(Lq / block_m)] fp32 (with the softmax scale and log2(e) folded in); k_codes, k_scale likewise per
    block_n keys of K minus its mean; key_bias: [B, H, Lk] fp32, ``q_mean · (k - k_mean)`` in the same log2 units
    (the score part that Q's smoothing removed; K's mean only shifts a row's scores, which softmax ignores); v_codes:
    [B, H, Lk, d] e4m3 with v_scale, v_mean: [B, H, d] fp32 (fp8 mode), or the bf16 V itself (bf16 mode, v_scale
    and v_mean None)."""

    q_codes: torch.Tensor
    q_scale: torch.Tensor
    k_codes: torch.Tensor
    k_scale: torch.Tensor
    key_bias: torch.Tensor
    v_codes: torch.Tensor
    v_scale: torch.Tensor | None
    v_mean: torch.Tensor | None


def round_int8(values: torch.Tensor) -> torch.Tensor:
    """To nearest, ties to even, clamped to ±127."""
    return values.round().clamp_(-QMAX["int8"], QMAX["int8"]).to(torch.int8)


def quantize_blocks(x: torch.Tensor, block: int, extra_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [B, H, L, d] float -> int8 codes [B, H, L, d] and scales [B, H, ceil(L / block)] (one per block of rows,
    ``max(amax, 1e-8) / 127``, times ``extra_scale``)."""
    B, H, L, d = x.shape
    blocks = -(-L // block)
    padded = torch.zeros(B, H, blocks * block, d, dtype=torch.float32, device=x.device)
    padded[:, :, :L] = x
    padded = padded.unflatten(2, (blocks, block))
    scale = padded.abs().amax(dim=(3, 4)).clamp_min(MIN_AMAX) / QMAX["int8"]
    codes = round_int8(padded / scale[..., None, None]).flatten(2, 3)[:, :, :L]
    return codes, scale * extra_scale


def quantize_v_fp8(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v: [B, H, L, d] -> e4m3 codes of ``(v - mean) / scale``, scale [B, H, d] (channel amax / 448), mean [B, H, d]."""
    mean = v.float().mean(dim=2)
    centred = v.float() - mean[:, :, None]
    scale = centred.abs().amax(dim=2).clamp_min(MIN_AMAX) / QMAX["fp8_e4m3"]
    return (centred / scale[:, :, None]).to(torch.float8_e4m3fn), scale, mean


def quantize_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_m: int, block_n: int,
                    pv: str) -> QuantizedInputs:
    """q: [B, H, Lq, d], k, v: [B, H, Lk, d] -> the kernel's inputs (see `QuantizedInputs`)."""
    softmax_scale = LOG2E / math.sqrt(q.shape[-1])
    q_float, k_float = q.float(), k.float()
    q_mean = q_float.mean(dim=2, keepdim=True)
    k_centred = k_float - k_float.mean(dim=2, keepdim=True)
    q_codes, q_scale = quantize_blocks(q_float - q_mean, block_m, softmax_scale)
    k_codes, k_scale = quantize_blocks(k_centred, block_n)
    key_bias = (q_mean @ k_centred.transpose(-1, -2)).squeeze(2) * softmax_scale
    if pv == "fp8":
        v_codes, v_scale, v_mean = quantize_v_fp8(v)
    else:
        v_codes, v_scale, v_mean = v.to(torch.bfloat16), None, None
    return QuantizedInputs(q_codes, q_scale, k_codes, k_scale, key_bias, v_codes, v_scale, v_mean)


def emulate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv: str = "fp8", block_m: int = 128,
            block_n: int = 64) -> torch.Tensor:
    """The kernel's result, computed eagerly. q: [B, H, Lq, d], k, v: [B, H, Lk, d] -> [B, H, Lq, d] bf16."""
    if pv not in PV_MODES:
        raise ValueError(f"pv must be one of {PV_MODES}, not {pv!r}")
    inputs = quantize_inputs(q, k, v, block_m, block_n, pv)
    B, H, Lq, d = q.shape
    Lk = k.shape[2]
    row_scale = inputs.q_scale.repeat_interleave(block_m, dim=2)[:, :, :Lq, None]
    q_codes = inputs.q_codes.double()  # int8 products summed over d <= 256 are exact in double as in int32
    running_max = torch.full((B, H, Lq, 1), -math.inf, device=q.device)
    running_sum = torch.zeros(B, H, Lq, 1, device=q.device)
    acc = torch.zeros(B, H, Lq, d, device=q.device)
    for start in range(0, Lk, block_n):
        keys = slice(start, min(start + block_n, Lk))
        scores = (q_codes @ inputs.k_codes[:, :, keys].double().transpose(-1, -2)).float()
        scores = (scores * row_scale * inputs.k_scale[:, :, start // block_n, None, None]
                  + inputs.key_bias[:, :, None, keys])
        new_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
        alpha = torch.exp2(running_max - new_max)
        p = torch.exp2(scores - new_max)
        running_sum = running_sum * alpha + p.sum(dim=-1, keepdim=True)
        if pv == "fp8":
            p_rounded = (p * P_SCALE).to(torch.float8_e4m3fn).float()
        else:
            p_rounded = p.to(torch.bfloat16).float()
        acc = acc * alpha + p_rounded @ inputs.v_codes[:, :, keys].float()
        running_max = new_max
    out = acc / running_sum
    if pv == "fp8":
        out = out * (inputs.v_scale / P_SCALE)[:, :, None] + inputs.v_mean[:, :, None]
    return out.to(torch.bfloat16)


def attention_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention in fp32 (the accuracy reference). Shapes as `emulate`; returns fp32."""
    q, k, v = q.float(), k.float(), v.float()
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


def errors(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    """Cosine similarity and relative L2 error of ``got`` against ``want`` (flattened, in fp64)."""
    got, want = got.double().flatten(), want.double().flatten()
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=0).item()
    return {"cosine": cosine, "rel_l2": ((got - want).norm() / want.norm()).item()}
