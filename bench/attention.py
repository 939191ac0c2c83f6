"""Self-attention at Wan-14B shapes: our 8-bit attention (int8 Q·Kᵀ with FP8 or bf16 P·V) against PyTorch's cuDNN
and flash SDPA, with accuracy against fp32 attention, and a sweep of the kernel's launch configs.

Usage: ``python bench/attention.py [--tokens 32760 75600] [--sweep] [--json attention.json]`` on a CUDA GPU with
the pack importable as ``wan_express``; ``--tiny`` runs the same code at tiny sizes on the CPU (our variants through
their eager emulation). Inputs are random normal bf16 q, k, v given as [B, H, L, D] views of [B, L, H, D] tensors,
as the DiT passes them (B = 1, H = 40, D = 128). Times are medians of CUDA-event timings; TOPS count 4·H·L²·D.
Accuracy (cosine, relative L2) is against fp32 attention on the first ``--accuracy-heads`` heads. ``--sweep`` times
FP8 P·V for every config of `configs.sweep` at the first length, the best three at the others, and prints the
best per length (what goes into `configs.CONFIGS`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from wan_express.kernels.attention import configs, op, reference
from wan_express.kernels.capability import compute_capability

SDPA_VARIANTS = {"cuDNN SDPA": SDPBackend.CUDNN_ATTENTION, "flash SDPA": SDPBackend.FLASH_ATTENTION}
OURS = {"sage8 fp8 PV": "fp8", "sage8 bf16 PV": "bf16"}
BASELINE = "cuDNN SDPA"


def median_ms(fn, repeats: int, device: torch.device) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def make_inputs(tokens: int, heads: int, head_dim: int, device: torch.device, seed: int = 0):
    generator = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(1, tokens, heads, head_dim, generator=generator, device=device, dtype=torch.bfloat16)
            .transpose(1, 2) for _ in range(3)]


def fp32_reference(q, k, v, heads: int) -> torch.Tensor:
    """fp32 attention of the first ``heads`` heads, one head at a time (memory-efficient SDPA on the GPU)."""
    return torch.cat([F.scaled_dot_product_attention(*(t[:, h:h + 1].float() for t in (q, k, v)))
                      for h in range(heads)], dim=1)


def variants(q, k, v, tiny: bool) -> dict:
    calls = {name: (lambda pv=pv: op.run(q, k, v, pv)) for name, pv in OURS.items()}
    if tiny:
        calls["math SDPA"] = lambda: F.scaled_dot_product_attention(q, k, v)
        return calls
    for name, backend in SDPA_VARIANTS.items():
        def sdpa(backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v)
        calls[name] = sdpa
    return calls


def bench_length(tokens: int, args, device: torch.device) -> dict:
    q, k, v = make_inputs(tokens, args.heads, args.head_dim, device)
    want = fp32_reference(q, k, v, args.accuracy_heads)
    ops = 4 * args.heads * tokens * tokens * args.head_dim
    rows = {}
    for name, call in variants(q, k, v, args.tiny).items():
        try:
            ms = median_ms(call, args.repeats, device)
            error = reference.errors(call()[:, :args.accuracy_heads], want)
        except RuntimeError as failure:  # a kernel this build or GPU does not offer
            rows[name] = {"error": str(failure).splitlines()[0]}
            continue
        rows[name] = {"ms": ms, "tops": ops / ms / 1e9, **error}
    base = rows.get(BASELINE, rows.get("math SDPA", {})).get("ms")
    for row in rows.values():
        if "ms" in row and base:
            row["speedup_vs_" + ("cudnn" if not args.tiny else "math")] = base / row["ms"]
    return rows


def sweep(args, device: torch.device) -> dict:
    grid = configs.sweep(compute_capability(device))
    results: dict[int, list] = {}
    candidates = grid
    for index, tokens in enumerate(args.tokens):
        q, k, v = make_inputs(tokens, args.heads, args.head_dim, device)
        timed = []
        for config in candidates:
            try:
                ms = median_ms(lambda: op.run(q, k, v, "fp8", config), max(2, args.repeats // 2), device)
            except Exception as failure:  # noqa: BLE001 - a config that does not compile or fit is reported
                timed.append({"config": config.__dict__, "error": str(failure).splitlines()[0][:200]})
                continue
            timed.append({"config": config.__dict__, "ms": ms,
                          "tops": 4 * args.heads * tokens ** 2 * args.head_dim / ms / 1e9})
        ok = sorted((row for row in timed if "ms" in row), key=lambda row: row["ms"])
        results[tokens] = timed
        if index == 0:
            candidates = [configs.AttentionConfig(**row["config"]) for row in ok[:3]]
        best = ok[0] if ok else None
        print(f"sweep L={tokens}: {len(ok)}/{len(timed)} configs ran; best "
              + (f"{best['config']} {best['ms']:.2f} ms {best['tops']:.0f} TOPS" if best else "none"))
        for row in ok[:5]:
            print(f"    {row['config']}  {row['ms']:.2f} ms  {row['tops']:.0f} TOPS")
        for row in timed:
            if "error" in row:
                print(f"    failed {row['config']}: {row['error']}")
    return {str(tokens): rows for tokens, rows in results.items()}


def print_table(results: dict) -> None:
    for tokens, rows in results.items():
        print(f"\nL = {tokens}")
        print(f"{'variant':<16} {'ms':>9} {'TOPS':>7} {'speedup':>8} {'cosine':>9} {'rel L2':>8}")
        for name, row in rows.items():
            if "error" in row:
                print(f"{name:<16} failed: {row['error']}")
                continue
            speedup = next((value for key, value in row.items() if key.startswith("speedup")), float("nan"))
            print(f"{name:<16} {row['ms']:9.2f} {row['tops']:7.0f} {speedup:7.2f}x {row['cosine']:9.6f} "
                  f"{row['rel_l2']:8.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[32760, 75600])
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--accuracy-heads", type=int, default=4)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (smoke test)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.tiny:
        args.tokens, args.heads, args.head_dim, args.accuracy_heads = [96, 50], 2, 64, 2
        args.repeats = min(args.repeats, 2)
        device = torch.device("cpu")
    else:
        device = torch.device("cuda")
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, SM {compute_capability(device)}, "
              f"table config {configs.config_for(args.head_dim, compute_capability(device))}")
    results = {"lengths": {str(tokens): bench_length(tokens, args, device) for tokens in args.tokens}}
    print_table(results["lengths"])
    if args.sweep:
        results["sweep"] = sweep(args, device)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
