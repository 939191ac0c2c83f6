"""Runs the 8-bit attention's Triton kernels under Triton's CPU interpreter against `reference.emulate` and prints
the errors as JSON.

`test_attention_triton.py` starts this in a fresh process: the interpreter has to be chosen (TRITON_INTERPRET=1)
before Triton is first imported. Small tiles keep it fast; the lengths leave partial tiles and differ for q and k. Only FP8 P·V runs here: the
interpreter (Triton 3.9) multiplies bf16 operands of `tl.dot` as if their bits were integers, so the bf16 P·V
variant is checked on the GPU (test_attention_gpu.py).
"""

import json

import torch

from wan_express.kernels.attention import reference
from wan_express.kernels.attention.configs import AttentionConfig
from wan_express.kernels.attention.triton_kernels import sage8

SMALL_TILE = AttentionConfig(block_m=32, block_n=16, num_warps=4, num_stages=1)
# (head dim, query length, key length): self-attention with partial tiles, and cross-attention shapes.
CASES = [(64, 75, 75), (128, 70, 37), (64, 40, 100)]


def inputs(head_dim: int, Lq: int, Lk: int, shared_mean: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    mean = shared_mean * torch.randn(1, 1, 1, head_dim, generator=generator)
    # q and k arrive as transposed views of [B, L, H, d] projections, as in the DiT.
    q = (torch.randn(1, Lq, 2, head_dim, generator=generator) + mean.transpose(1, 2)).transpose(1, 2)
    k = (torch.randn(1, Lk, 2, head_dim, generator=generator) + mean.transpose(1, 2)).transpose(1, 2)
    v = torch.randn(1, 2, Lk, head_dim, generator=generator) + 0.5
    return [t.to(torch.bfloat16) for t in (q, k, v)]


def main() -> None:
    results = {}
    for seed, (head_dim, Lq, Lk) in enumerate(CASES):
        for shared_mean in (0.0, 4.0):
            q, k, v = inputs(head_dim, Lq, Lk, shared_mean, seed)
            want = reference.attention_fp32(q, k, v)
            for pv in ("fp8",):
                got = sage8(q, k, v, pv, SMALL_TILE, soft_round=True)
                emulated = reference.emulate(q, k, v, pv, SMALL_TILE.block_m, SMALL_TILE.block_n)
                results[f"d={head_dim} Lq={Lq} Lk={Lk} mean={shared_mean} pv={pv}"] = {
                    "finite": bool(torch.isfinite(got.float()).all()), "shape": list(got.shape),
                    "vs_emulation": reference.errors(got, emulated), "vs_fp32": reference.errors(got, want)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
