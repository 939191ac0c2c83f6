"""Where one Wan2.1 T2V-14B DiT forward spends its GPU time: a `torch.profiler` trace of one forward of a
`dit_forward.py` variant (default ``ours fp8 eager``, 480p / 81 frames, cfg 1), the kernels grouped into GEMMs,
attention, our fused / quantization kernels, other elementwise work and the rest, with time and share per group and
the top kernels. The evidence behind the forward targets: what is left once GEMMs and attention are counted.
Prints a table and writes JSON; ``--tiny`` runs the same code on a tiny model on the CPU (smoke test: CPU ops).

    python bench/profile_forward.py --json profile_forward.json [--variant "ours fp8 eager"] [--size 480p]
"""

from __future__ import annotations

import argparse
import json
import re

import torch
from dit_forward import LATENTS, TINY_CONFIG, TINY_LATENTS, VARIANTS, build, random_bf16_weights  # bench/
from torch.profiler import ProfilerActivity, profile

from wan_express.models import RELEASED_CONFIGS

# Kernel name patterns per group, first match wins (CUDA kernel names, or aten op names on the CPU).
GROUPS = [
    ("attention", r"fmha|flash|cudnn.*(attn|sdpa)|attention|sdpa|_attn_fwd|sage8"),
    ("gemm", r"gemm|xmma|cutlass|_scaled_mm|matmul|mm_kernel|nvjet|sm90_|aten::(addmm|mm|bmm|linear)"),
    ("fused norm/rope/residual", r"rms_norm_rope|gated_residual|_norm_rope"),
    ("activation quantization", r"quant|_ln_modulate|gelu_quant|per_token"),
    ("layer norm / modulation", r"layer_norm|layernorm|modulat"),
    ("other elementwise", r"elementwise|vectorized|unrolled|triton_|copy|cat|fill|reduce|aten::"),
]


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, pattern in GROUPS:
        if re.search(pattern, lowered):
            return group
    return "rest"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="ours fp8 eager", choices=[v for v in VARIANTS if "compiled" not in v])
    parser.add_argument("--size", default="480p", choices=list(LATENTS))
    parser.add_argument("--comfyui", help="ComfyUI folder, for the core variants")
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (smoke test)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", default="profile_forward.json")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    config, latents = (TINY_CONFIG, TINY_LATENTS) if args.tiny else (RELEASED_CONFIGS["Wan2.1-T2V-14B"], LATENTS)
    core = None
    if args.variant.startswith("core"):
        from dit_forward import import_core
        core = import_core(args.comfyui, device)
    weights = random_bf16_weights(config, device)
    model, forward = build(args.variant, config, weights, device, core, {})
    del weights
    generator = torch.Generator(device).manual_seed(1)
    feed = (torch.randn(1, config.out_dim, *latents[args.size], generator=generator, device=device),
            torch.tensor([937.5], device=device),
            torch.randn(1, config.text_len, config.text_dim, generator=generator, device=device,
                        dtype=torch.bfloat16))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.no_grad():
        forward(*feed)  # warm-up: backend choice, Triton builds
        if device == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as trace:
            forward(*feed)
            if device == "cuda":
                torch.cuda.synchronize()
    kernels = {}
    for event in trace.key_averages():
        seconds = (event.device_time_total if device == "cuda" else event.self_cpu_time_total) / 1e6
        is_kernel = device != "cuda" or event.device_type == torch.autograd.DeviceType.CUDA
        if seconds > 0 and is_kernel and (device == "cuda" or event.key.startswith("aten::")):
            kernels[event.key] = kernels.get(event.key, 0.0) + seconds
    total = sum(kernels.values())
    groups: dict[str, float] = {}
    for name, seconds in kernels.items():
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + seconds
    top = sorted(kernels.items(), key=lambda item: -item[1])[:args.top]
    results = {"card": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
               "variant": args.variant, "size": args.size, "kernel_seconds": total,
               "groups": dict(sorted(groups.items(), key=lambda item: -item[1])),
               "top": [{"kernel": name[:160], "seconds": seconds, "group": group_of(name)} for name, seconds in top]}
    print(f"{results['card']}, torch {results['torch']}: {args.variant}, {args.size}, one forward; "
          f"{total:.3f} s of {'GPU kernels' if device == 'cuda' else 'CPU ops'}")
    print(f"{'group':<28}{'seconds':>9}{'share':>8}")
    for group, seconds in results["groups"].items():
        print(f"{group:<28}{seconds:>9.3f}{seconds / total:>8.1%}")
    print("top kernels:")
    for row in results["top"]:
        print(f"  {row['seconds']:>8.3f} s  {row['group']:<26} {row['kernel'][:90]}")
    with open(args.json, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
