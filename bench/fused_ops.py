"""The fused non-GEMM ops of a Wan block (`kernels.fused`) against the eager PyTorch chains they replace, at Wan-14B
shapes (32,760 tokens, dim 5120, 40 heads × 128, 512 text tokens): time, bytes moved and effective GB/s per op, and
the bytes one whole bf16 block moves before and after the fusion.

Bytes are counted, not guessed: every PyTorch op the code runs is intercepted (a dispatch mode on meta tensors, so
the real shapes cost no memory) and charged its tensor inputs and outputs once (views are free; a fused op is one
op). Block bytes are split into GEMM weights/activations, attention inputs/outputs and the rest (the part the fusion
changes). Times are CUDA-event medians on a GPU; ``--tiny`` runs the same code at tiny shapes on the CPU.

    python bench/fused_ops.py [--json fused_ops.json] [--repeats 20] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wan_express.kernels import fused
from wan_express.kernels.ops import TorchOps
from wan_express.models import RELEASED_CONFIGS, WanConfig
from wan_express.models.wan_dit import TimeConditioning, WanBlock

REAL = dict(config=RELEASED_CONFIGS["Wan2.1-T2V-14B"], grid=(21, 30, 52))  # 480p, 81 frames: 32,760 tokens
TINY = dict(config=WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=1, text_dim=64),
            grid=(3, 4, 5))
GEMMS = ("mm", "addmm", "bmm", "_scaled_mm", "_int_mm")
ALLOCATIONS = ("empty", "new_empty", "empty_like", "empty_strided")


def eager_qk_norm_rope(x, weight, rope, eps, dtype):
    """The pre-fusion chain: Wan RMSNorm (fp32, rounded, times the weight), fp32 RoPE on [B, L, H, d], cast."""
    cos, sin = rope
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight
    return fused.apply_rope(normed.unflatten(-1, (-1, 2 * cos.shape[1])), cos, sin).to(dtype).flatten(-2)


def eager_qk_norm(x, weight, eps, dtype):
    x32 = x.float()
    return ((x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight).to(dtype)


def eager_gated_residual_(residual, update, gate):
    """``x + y * gate`` as separate ops, the sum written over the stream (the bytes of ``x = x + y * gate``)."""
    torch.add(residual, update if gate is None else update * gate, out=residual)


class CountedAttention:
    """Attention charged as one kernel reading q, k, v and writing the output (its inner traffic is the attention
    kernel's business, the same before and after the fusion); the values are not computed."""

    counter: "ByteCounter | None" = None

    def attention(self, q, k, v):
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if self.counter is not None:
            self.counter.bytes["attention"] += sum(t.numel() * t.element_size() for t in (q, k, v, out))
        return out


class FusedOps(CountedAttention, TorchOps):
    """The DiT's ops now, for the block comparison."""


class EagerOps(CountedAttention, TorchOps):
    """The DiT's ops before the fusion, for the block comparison."""

    def qk_norm_rope(self, x, weight, rope, eps, dtype):
        return eager_qk_norm_rope(x, weight, rope, eps, dtype)

    def qk_norm(self, x, weight, eps, dtype):
        return eager_qk_norm(x, weight, eps, dtype)

    def gated_residual_(self, residual, update, gate):
        eager_gated_residual_(residual, update, gate)


class ByteCounter(TorchDispatchMode):
    """Sums, per category, the bytes of the tensor inputs and outputs of every op run under it (views excluded)."""

    def __init__(self):
        super().__init__()
        self.bytes = {"gemm": 0, "attention": 0, "other": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not func.is_view and func.__name__.split(".")[0] not in ALLOCATIONS:
            tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            moved = sum(t.numel() * t.element_size() for t in tensors)
            name = func.__name__.split(".")[0]
            self.bytes["gemm" if name in GEMMS else "other"] += moved
        return out


def count_bytes(fn, *args, ops: CountedAttention | None = None) -> dict[str, int]:
    counter = ByteCounter()
    if ops is not None:
        ops.counter = counter
    with torch.no_grad(), counter:
        fn(*args)
    return counter.bytes


def op_cases(config: WanConfig, grid, device) -> dict:
    """name -> (eager fn, fused fn, input builder): each builder makes fresh inputs on ``device``."""
    tokens, dim = grid[0] * grid[1] * grid[2], config.dim

    def projection(generator=None, rows=tokens):
        x = torch.empty(1, rows, dim, device=device, dtype=torch.bfloat16)
        return x if device.type == "meta" else x.normal_(generator=generator)

    def norm_args(rope: bool):
        def build():
            weight = torch.ones(dim, device=device)
            args = [projection(), weight]
            if rope:
                args.append(fused.rope_tables(grid, config.head_dim, device))
            return (*args, config.eps, torch.bfloat16)
        return build

    def residual_args():
        stream = torch.zeros(1, tokens, dim, device=device)
        return stream, projection(), torch.full((1, 1, dim), 0.5, device=device)

    return {
        "qk_norm_rope (self q or k)": (eager_qk_norm_rope, lambda x, w, rope, eps, dtype: fused.qk_norm_rope(
            x, w, *rope, eps, dtype), norm_args(True)),
        "qk_norm (cross q)": (eager_qk_norm, fused.qk_norm, norm_args(False)),
        "gated_residual_": (eager_gated_residual_, fused.gated_residual_, residual_args),
    }


def median_ms(fn, args, repeats: int, cuda: bool) -> float:
    times = []
    with torch.no_grad():
        fn(*args)
        for _ in range(repeats):
            if cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(*args)
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop))
            else:
                begin = time.perf_counter()
                fn(*args)
                times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def block_bytes(config: WanConfig, grid) -> dict:
    """Bytes one bf16 block moves with the eager ops and with the fused ones (meta tensors, real shapes)."""
    tokens = grid[0] * grid[1] * grid[2]
    meta = torch.device("meta")
    result = {}
    for label, ops in (("eager", EagerOps()), ("fused", FusedOps())):
        with meta:
            block = WanBlock(ops, config, "blocks.0").requires_grad_(False)
        for module in block.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.bfloat16)
        x = torch.empty(1, tokens, config.dim, device=meta)
        e0 = torch.empty(1, 6, config.dim, device=meta)
        time_conditioning = TimeConditioning(e=e0[:, 0], e0=e0, index=None)
        context = torch.empty(1, config.text_len, config.dim, device=meta, dtype=torch.bfloat16)
        rope = fused.rope_tables(grid, config.head_dim, meta)
        result[label] = count_bytes(block, x, time_conditioning, context, rope, torch.bfloat16, ops=ops)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="fused_ops.json")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (smoke test)")
    args = parser.parse_args()
    shapes = TINY if args.tiny else REAL
    config, grid = shapes["config"], shapes["grid"]
    cuda = not args.tiny and torch.cuda.is_available()
    if not args.tiny and not cuda:
        raise SystemExit("the real shapes need a CUDA GPU; use --tiny on a CPU")
    device = torch.device("cuda" if cuda else "cpu")
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "tokens": grid[0] * grid[1] * grid[2], "dim": config.dim, "heads": config.num_heads,
              "head_dim": config.head_dim, "ops": []}
    print(f"{report['device']}, torch {report['torch']}: S = {report['tokens']}, D = {config.dim}, "
          f"{config.num_heads} x {config.head_dim} heads")
    print(f"{'op':<28} {'variant':<6} {'ms':>9} {'MB moved':>10} {'GB/s':>8}")
    for name, (eager, fused_fn, build) in op_cases(config, grid, device).items():
        row = {"op": name}
        for label, fn in (("eager", eager), ("fused", fused_fn)):
            moved = sum(count_bytes(fn, *op_cases(config, grid, torch.device("meta"))[name][2]()).values())
            ms = median_ms(fn, build(), args.repeats, cuda)
            row[label] = {"ms": ms, "bytes": moved, "gb_per_s": moved / ms / 1e6}
            print(f"{name:<28} {label:<6} {ms:9.3f} {moved / 1e6:10.1f} {moved / ms / 1e6:8.0f}")
        row["speedup"] = row["eager"]["ms"] / row["fused"]["ms"]
        report["ops"].append(row)
    blocks = block_bytes(config, grid)
    report["block_bytes"] = {label: counted["other"] for label, counted in blocks.items()}
    report["block_bytes_by_kind"] = blocks
    print("one bf16 block, GB moved (gemm / attention / other non-GEMM):")
    for label, counted in blocks.items():
        print(f"  {label:<6} " + " / ".join(f"{counted[kind] / 1e9:.2f}" for kind in ("gemm", "attention", "other")))
    with open(args.json, "w") as file:
        json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
