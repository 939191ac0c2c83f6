"""Whole Wan2.1 T2V-14B DiT forwards at real shapes: ours (bf16 / FP8 / INT8 W8A8, eager and compiled) against a plain
compiled-bf16 + SDPA reference DiT written here (`ReferenceDiT`) and against ComfyUI core's own Wan DiT
(``comfy.ldm.wan.model.WanModel``, bf16 and its fp8-fast operations) imported from ``--comfyui DIR``.

Random weights (fan-in scaled normals, generated on the device, kept on the CPU between variants), one conditional
forward as in 4-step distill sampling (cfg 1), a latent of 81 frames at 480p (32,760 tokens) and 720p (75,600
tokens). Each variant is built on the device, warmed up (backend choice, Triton builds, compilation), timed (median of
``--repeats``, CUDA events) with its peak memory, and freed before the next: only one model is on the device at a time
(14B bf16 is 28 GB). Ratios are against core bf16 and against the reference of the same run. Prints a table and
writes JSON. ``--tiny`` runs every variant on a tiny config on the CPU (what tests/test_bench_smoke.py runs).

    python bench/dit_forward.py --comfyui .comfy_host --json dit_forward.json [--sizes 480p 720p] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from random_fp8 import scale_like_weight_  # bench/, the script's folder
from torch import nn
from torch.nn.attention import sdpa_kernel

from wan_express.kernels import backends
from wan_express.kernels.attention import CUDA_PRIORITY
from wan_express.kernels.compile import compile_dit, warm_up
from wan_express.kernels.quantize import quantize_layers
from wan_express.kernels.quantized import QuantOps, QuantScheme
from wan_express.loaders.dit.quant_targets import block_linear_layers
from wan_express.models import RELEASED_CONFIGS, WanConfig, WanDiT

LATENTS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}  # 81 frames; tokens = 21 * h/2 * w/2
TINY_CONFIG = WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)
TINY_LATENTS = {"480p": (2, 4, 6), "720p": (2, 6, 8)}
OURS = {"bf16": None, "fp8": QuantScheme("fp8_e4m3"), "int8": QuantScheme("int8")}
VARIANTS = ["core bf16", "core fp8-fast", "reference bf16 compiled"] + [
    f"ours {kind} {how}" for kind in OURS for how in ("eager", "compiled")]


class ReferenceBlock(nn.Module):
    """One Wan block, plainly: bf16 throughout, PyTorch SDPA, RoPE rotated in bf16 (spec performance.md §3.3)."""

    def __init__(self, dim: int, ffn_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.o = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_q, self.cross_kv, self.cross_o = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.cross_norm_q, self.cross_norm_k = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x, e0, context, cos, sin):
        """x: [B, S, D]; e0: [B, 6, D]; context: [B, L, D]; cos, sin: [S, head_dim / 2]."""
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation + e0).unbind(1)
        dim = x.shape[-1]
        h = F.layer_norm(x, (dim,), eps=1e-6) * (1 + scale_sa[:, None]) + shift_sa[:, None]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        q, k = (rotate(self._heads(norm(t)), cos, sin) for norm, t in ((self.norm_q, q), (self.norm_k, k)))
        attended = sdpa(q, k, self._heads(v)).transpose(1, 2).flatten(2)
        x = x + self.o(attended) * gate_sa[:, None]
        cross_k, cross_v = self.cross_kv(context).chunk(2, dim=-1)
        attended = sdpa(self._heads(self.cross_norm_q(self.cross_q(self.norm3(x)))),
                        self._heads(self.cross_norm_k(cross_k)), self._heads(cross_v))
        x = x + self.cross_o(attended.transpose(1, 2).flatten(2))
        h = F.layer_norm(x, (dim,), eps=1e-6) * (1 + scale_ff[:, None]) + shift_ff[:, None]
        return x + self.ffn(h) * gate_ff[:, None]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch SDPA with cuDNN's kernel first, as core's attention and ours ask for it (flash is PyTorch's default)."""
    with sdpa_kernel(CUDA_PRIORITY, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on interleaved pairs of x [B, H, S, d] with cos, sin [S, d/2], in x's dtype."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


class ReferenceDiT(nn.Module):
    """A compact independent Wan T2V DiT at a `WanConfig`'s shapes (its own random weights; for timing only)."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim = config.dim
        self.config = config
        self.patch = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.text = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(ReferenceBlock(dim, config.ffn_dim, config.num_heads)
                                    for _ in range(config.num_layers))
        self.head_modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)
        self.head = nn.Linear(dim, math.prod(config.patch_size) * config.out_dim)

    def forward(self, latent: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """latent: [B, C, F, H, W]; t: [B]; context: [B, 512, text_dim] -> velocity [B, C, F, H, W]."""
        cfg, dtype = self.config, self.head.weight.dtype
        tokens = self.patch(latent.to(dtype))
        f, h, w = tokens.shape[2:]
        x = tokens.flatten(2).transpose(1, 2)
        half = cfg.freq_dim // 2
        angles = t.float()[:, None] * torch.pow(10000.0, -torch.arange(half, device=t.device) / half)
        e = self.time(torch.cat([angles.cos(), angles.sin()], dim=1).to(dtype))
        e0 = self.time_projection(e).unflatten(1, (6, cfg.dim))
        cos, sin = rope_tables((f, h, w), cfg.head_dim, x.device, dtype)
        context = self.text(context.to(dtype))
        for block in self.blocks:
            x = block(x, e0, context, cos, sin)
        shift, scale = (self.head_modulation + e[:, None]).unbind(1)
        out = self.head(F.layer_norm(x, (cfg.dim,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None])
        pt, ph, pw = cfg.patch_size
        out = out.reshape(x.shape[0], f, h, w, pt, ph, pw, cfg.out_dim)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], cfg.out_dim, f * pt, h * ph, w * pw)


def rope_tables(grid, head_dim: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan's 3-D RoPE: head_dim/2 pairs split time / height / width (d/2 - 2·(d/6), d/6, d/6), base 10000."""
    pairs = head_dim // 2
    split = (pairs - 2 * (pairs // 3), pairs // 3, pairs // 3)
    angles = []
    for axis, (size, n) in enumerate(zip(grid, split)):
        per_axis = torch.arange(size, device=device)[:, None] * 10000.0 ** (-torch.arange(n, device=device) / n)
        shape = [1, 1, 1, n]
        shape[axis] = size
        angles.append(per_axis.view(shape).expand(*grid, n))
    angles = torch.cat(angles, dim=-1).reshape(-1, pairs)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def random_bf16_weights(config: WanConfig, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-named random tensors on the CPU (generated on ``device``): matrices ~ N(0, 1/fan_in), norms 1."""
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in WanDiT(config).state_dict().items()}
    generator = torch.Generator(device).manual_seed(seed)
    return {key: scale_like_weight_(key, torch.randn(shape, generator=generator, device=device,
                                                     dtype=torch.bfloat16)).cpu()
            for key, shape in shapes.items()}


def import_core(folder: str, device: str):
    """ComfyUI core's Wan DiT module and ops from a ComfyUI checkout (added to sys.path), set up for ``device``."""
    sys.path.insert(0, folder)
    import comfy.cli_args
    comfy.cli_args.args.cpu = device == "cpu"  # as ``main.py --cpu``: read when core's memory manager is imported
    import comfy.ldm.wan.model as core_wan
    import comfy.ops as core_ops
    return core_wan, core_ops


def core_model(core, config: WanConfig, weights: dict, device: str, fp8_fast: bool) -> nn.Module:
    """Core's WanModel built as core builds a Wan 14B T2V (bf16 weights, or fp8 e4m3fn weights with the operations
    core picks for ``fp8_e4m3fn_fast``), loaded with the official-named weights."""
    core_wan, core_ops = core
    weight_dtype = torch.float8_e4m3fn if fp8_fast else torch.bfloat16
    operations = core_ops.pick_operations(weight_dtype, torch.bfloat16, load_device=torch.device(device),
                                          fp8_optimizations=fp8_fast)
    model = core_wan.WanModel(model_type="t2v", patch_size=config.patch_size, text_len=config.text_len,
                              in_dim=config.in_dim, dim=config.dim, ffn_dim=config.ffn_dim, freq_dim=config.freq_dim,
                              text_dim=config.text_dim, out_dim=config.out_dim, num_heads=config.num_heads,
                              num_layers=config.num_layers, qk_norm=True, cross_attn_norm=True, eps=config.eps,
                              device=device, dtype=weight_dtype, operations=operations)
    model.load_state_dict(weights)
    model.operations_name = operations.__name__
    return model.eval()


def build(variant: str, config: WanConfig, weights: dict, device: str, core, compile_options: dict) -> tuple:
    """(model, forward(latent, t, context) -> velocity) of one variant, on ``device``."""
    if variant.startswith("core"):
        model = core_model(core, config, weights, device, fp8_fast=variant == "core fp8-fast")
        return model, lambda latent, t, context: model(latent.to(torch.bfloat16), t, context)
    if variant.startswith("reference"):
        model = ReferenceDiT(config).to(device, torch.bfloat16).eval()
        return model, torch.compile(model, **compile_options)
    scheme = OURS[variant.split()[1]]
    if scheme is None:
        model = WanDiT.from_state_dict(weights, dtype=torch.bfloat16, device=device)
    else:
        layers = block_linear_layers(weights, scheme)
        model = WanDiT.from_state_dict(quantize_layers(weights, layers, device=device), dtype=torch.bfloat16,
                                       device=device, ops=QuantOps(layers))
    return model, model


def time_forward(forward: Callable, inputs: tuple, repeats: int, device: str) -> list[float]:
    """Seconds of ``repeats`` forwards after a warm-up one (which compiles); peak memory restarts after it."""
    cuda = device == "cuda"
    with torch.no_grad():
        forward(*inputs)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                forward(*inputs)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                began = time.perf_counter()
                forward(*inputs)
                times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(LATENTS), choices=list(LATENTS))
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--comfyui", help="ComfyUI folder whose comfy/ldm/wan/model.py is core's DiT")
    parser.add_argument("--compile-mode", default="full", choices=["block", "full"], help="for ours compiled")
    parser.add_argument("--compile-backend", help="torch.compile backend (default: inductor; --tiny: aot_eager)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (smoke test)")
    parser.add_argument("--json", default="dit_forward.json")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    config, latents = (TINY_CONFIG, TINY_LATENTS) if args.tiny else (RELEASED_CONFIGS["Wan2.1-T2V-14B"], LATENTS)
    compile_options = {"dynamic": False, "backend": args.compile_backend or ("aot_eager" if args.tiny else "inductor")}
    variants = [v for v in args.variants if args.comfyui or not v.startswith("core")]
    core = import_core(args.comfyui, device) if args.comfyui else None
    weights = random_bf16_weights(config, device)
    generator = torch.Generator(device).manual_seed(1)
    context = torch.randn(1, config.text_len, config.text_dim, generator=generator, device=device,
                          dtype=torch.bfloat16)
    feeds = {size: (torch.randn(1, config.out_dim, *latents[size], generator=generator, device=device),
                    torch.tensor([937.5], device=device), context) for size in args.sizes}
    results = {"card": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
               "model": "tiny" if args.tiny else "Wan2.1-T2V-14B", "compile_mode": args.compile_mode,
               "compile_backend": compile_options["backend"], "repeats": args.repeats, "runs": []}
    if core is not None:
        results["core_attention"] = core[0].optimized_attention.__name__
    for variant in variants:
        model, forward = build(variant, config, weights, device, core, compile_options)
        memory = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else None
        ours_compiled = variant.startswith("ours") and variant.endswith("compiled")
        for index, size in enumerate(args.sizes):
            if ours_compiled:  # eager first: fixes the backends and RoPE tables of these shapes before tracing
                warm_up(model, *feeds[size])
                if index == 0:
                    compile_dit(model, args.compile_mode, **compile_options)
            times = time_forward(forward, feeds[size], args.repeats, device)
            results["runs"].append({
                "variant": variant, "size": size, "tokens": math.prod(latents[size]) // 4,
                "frames": 4 * (latents[size][0] - 1) + 1,
                "forward_s": statistics.median(times), "times_s": times, "weights_gib": memory,
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
                "operations": getattr(model, "operations_name", None)})
            run = results["runs"][-1]
            print(f"{variant:<26}{size:<6}{run['forward_s']:>8.3f} s  peak {run['peak_gib'] or 0:.1f} GiB", flush=True)
        add_ratios(results)
        with open(args.json, "w") as handle:  # what has run so far survives a time limit, ratios included
            json.dump(results, handle, indent=1)
        del model, forward
        gc.collect()
        torch._dynamo.reset()
        if device == "cuda":
            torch.cuda.empty_cache()
    results["w8a8_backends"] = {f"{key[0]} M<={key[1]} N={key[2]} K={key[3]}": name
                                for key, name in backends.choices().items()}
    report(results)
    with open(args.json, "w") as handle:
        json.dump(results, handle, indent=1)


def add_ratios(results: dict) -> None:
    """Adds the same-run ratios (vs core bf16, vs the reference; None where that anchor has not run) to every run."""
    anchors = {(run["variant"], run["size"]): run["forward_s"] for run in results["runs"]}
    for run in results["runs"]:
        for key, anchor in (("vs_core_bf16", "core bf16"), ("vs_reference", "reference bf16 compiled")):
            base = anchors.get((anchor, run["size"]))
            run[key] = base / run["forward_s"] if base else None


def report(results: dict) -> None:
    """Adds the same-run ratios to every run and prints the table."""
    add_ratios(results)
    print(f"{results['card']}, torch {results['torch']}: {results['model']} DiT, one forward (cfg 1); "
          f"compiled = {results['compile_mode']} ({results['compile_backend']})")
    print(f"{'variant':<26}{'size':<6}{'tokens':>8}{'forward s':>11}{'vs core bf16':>14}{'vs reference':>14}"
          f"{'model GiB':>11}{'peak GiB':>10}")
    for run in results["runs"]:
        ratios = [f"{run[key]:.2f}x" if run[key] else "-" for key in ("vs_core_bf16", "vs_reference")]
        memory = [f"{run[key]:.1f}" if run[key] is not None else "-" for key in ("weights_gib", "peak_gib")]
        print(f"{run['variant']:<26}{run['size']:<6}{run['tokens']:>8}{run['forward_s']:>11.3f}{ratios[0]:>14}"
              f"{ratios[1]:>14}{memory[0]:>11}{memory[1]:>10}")


if __name__ == "__main__":
    main()
