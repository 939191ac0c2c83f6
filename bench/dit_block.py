"""One real Wan-14B block (`models.wan_dit.WanBlock`, random normal weights) in bf16, FP8 with separate activation
quantization kernels, FP8 with the fused LN+modulation / affine LN / GELU quantizers, and INT8 (fused).

Usage: ``python bench/dit_block.py [--tokens 32760 75600] [--json dit_block.json]`` on a CUDA GPU, with the pack
importable as ``wan_express``. Times are CUDA-event medians of whole block forwards (attention: PyTorch SDPA bf16).
"""

from __future__ import annotations

import argparse
import json

import torch

from wan_express.kernels import backends
from wan_express.kernels.ops import TorchOps
from wan_express.kernels.quantize import quantize_weight
from wan_express.kernels.quantized import QuantLinear, QuantOps, QuantScheme
from wan_express.models.wan_config import RELEASED_CONFIGS
from wan_express.models.wan_dit import TimeConditioning, WanBlock, rope_tables

CONFIG = RELEASED_CONFIGS["Wan2.1-T2V-14B"]
GRIDS = {32760: (21, 30, 52), 75600: (21, 45, 80)}  # 480p and 720p, 81 frames
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


class SeparateQuantOps(QuantOps):
    """FP8/INT8 linears whose inputs are quantized by a standalone kernel (LN+modulation, LN and GELU stay torch)."""

    norm_modulate = TorchOps.norm_modulate
    layer_norm = TorchOps.layer_norm
    gelu_tanh = TorchOps.gelu_tanh


def build_block(ops: TorchOps, seed: int) -> WanBlock:
    """A block with random normal weights (fan-in scaled), bf16 matmul weights, fp32 norms and modulation."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    with torch.device("cuda"):
        block = WanBlock(ops, CONFIG, "blocks.0")
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, QuantLinear):
                weight = torch.randn(module.weight.shape, device="cuda", generator=generator)
                codes, scale = quantize_weight(weight / weight.shape[1] ** 0.5, module.scheme)
                module.weight.copy_(codes)
                module.weight_scale.copy_(scale)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, device="cuda", generator=generator))
            elif isinstance(module, torch.nn.Linear):
                module.weight.normal_(generator=generator).div_(module.weight.shape[1] ** 0.5)
                module.bias.normal_(generator=generator).mul_(0.1)
        block.modulation.normal_(generator=generator).mul_(0.5 / CONFIG.dim ** 0.5)
    for module in block.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)
        elif isinstance(module, QuantLinear):
            module.bias.data = module.bias.data.to(torch.bfloat16)
    return block.requires_grad_(False).eval()


def time_block(block: WanBlock, tokens: int, repeats: int) -> float:
    """Median ms of ``repeats`` block forwards, each on the same input values (after 3 warm-up forwards)."""
    generator = torch.Generator(device="cuda").manual_seed(1)
    residual = torch.randn(1, tokens, CONFIG.dim, device="cuda", generator=generator)
    e0 = 0.1 * torch.randn(1, 6, CONFIG.dim, device="cuda", generator=generator)
    time = TimeConditioning(e=e0[:, 0], e0=e0, index=torch.zeros(1, 1, dtype=torch.long, device="cuda"))
    context = torch.randn(1, 512, CONFIG.dim, device="cuda", generator=generator).to(torch.bfloat16)
    rope = rope_tables(GRIDS[tokens], CONFIG.head_dim, torch.device("cuda"))
    # The block adds its gated updates to x in place: every forward starts from a fresh copy of the residual,
    # made before the start event, so no repeat sees the previous one's output (or times the copy).
    x = torch.empty_like(residual)
    run = lambda: block(x, time, context, rope, torch.bfloat16)  # noqa: E731
    with torch.no_grad():
        for _ in range(3):
            x.copy_(residual)
            run()
        times = []
        for _ in range(repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            x.copy_(residual)
            start.record()
            run()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[32760, 75600], choices=sorted(GRIDS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default="dit_block.json")
    args = parser.parse_args()
    variants = {
        "bf16": lambda: TorchOps(),
        "fp8 separate quant": lambda: SeparateQuantOps({f"blocks.0.{n}": QuantScheme("fp8_e4m3") for n in BLOCK_LINEARS}),
        "fp8 fused": lambda: QuantOps({f"blocks.0.{n}": QuantScheme("fp8_e4m3") for n in BLOCK_LINEARS}),
        "int8 fused": lambda: QuantOps({f"blocks.0.{n}": QuantScheme("int8") for n in BLOCK_LINEARS}),
    }
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": []}
    print(f"{report['device']}, torch {report['torch']}: one Wan-14B block, ms (median of {args.repeats})")
    for tokens in args.tokens:
        row = {}
        for label, make_ops in variants.items():
            block = build_block(make_ops(), seed=0)
            row[label] = time_block(block, tokens, args.repeats)
            del block
            torch.cuda.empty_cache()
        report["results"].append({"tokens": tokens, "ms": row,
                                  "speedup_vs_bf16": {name: row["bf16"] / ms for name, ms in row.items()}})
        print(f"S = {tokens}: " + ", ".join(f"{name} {ms:.1f} ms ({row['bf16'] / ms:.2f}x)" for name, ms in row.items()))
    report["chosen_backends"] = {f"{key[0]} M<={key[1]} N={key[2]} K={key[3]}": name
                                 for key, name in backends.choices().items()}
    print("auto-chosen W8A8 backends:", report["chosen_backends"])
    with open(args.json, "w") as file:
        json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
