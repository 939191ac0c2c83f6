"""Whole Wan2.1 T2V-14B DiT forwards at real shapes: bf16 vs FP8 / INT8 W8A8 with fused activation quantization.

Random weights (fan-in scaled normals, generated on the GPU), one conditional forward as in 4-step distill
sampling (cfg 1), latent of 81 frames at 480p (32,760 tokens) and optionally 720p (75,600 tokens). Each variant is
built from the same bf16 weights in the same run (FP8/INT8 quantized per channel at load, as `load_dit(...,
quantization=...)` does), warmed up once (backend choice and Triton autotuning happen there), then timed with CUDA
events; the median is reported. Prints a table and writes JSON.

    python bench/dit_forward.py --json dit_forward.json [--sizes 480p 720p] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import torch
from random_fp8 import scale_like_weight_  # bench/, the script's folder

from wan_express.kernels.quantize import quantize_layers
from wan_express.kernels.quantized import QuantOps, QuantScheme
from wan_express.loaders.dit.quant_targets import block_linear_layers
from wan_express.models import RELEASED_CONFIGS, WanDiT

LATENTS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}  # 81 frames; tokens = 21 * h/2 * w/2


def random_bf16_weights(config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-named random tensors on the GPU: matrices ~ N(0, 1/fan_in), norms 1, modulation small."""
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in WanDiT(config).state_dict().items()}
    generator = torch.Generator("cuda").manual_seed(seed)
    weights = {}
    for key, shape in shapes.items():
        weights[key] = scale_like_weight_(key, torch.randn(shape, generator=generator, device="cuda",
                                                          dtype=torch.bfloat16))
    return weights


def time_forward(model: WanDiT, inputs: tuple, repeats: int) -> list[float]:
    """CUDA-event times of ``repeats`` forwards after one warm-up; the peak-memory counter restarts after it."""
    with torch.no_grad():
        model(*inputs)  # warm-up: backend choice, autotuning, RoPE tables
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(*inputs)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["480p"], choices=list(LATENTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="dit_forward.json")
    args = parser.parse_args()
    config = RELEASED_CONFIGS["Wan2.1-T2V-14B"]
    weights = random_bf16_weights(config)
    variants = {"bf16": None, "fp8 W8A8 fused": QuantScheme("fp8_e4m3"), "int8 W8A8 fused": QuantScheme("int8")}
    generator = torch.Generator("cuda").manual_seed(1)
    context = torch.randn(1, 512, config.text_dim, generator=generator, device="cuda", dtype=torch.bfloat16)
    results = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "model": "Wan2.1-T2V-14B",
               "frames": 81, "runs": []}
    for name, scheme in variants.items():
        if scheme is None:
            model = WanDiT.from_state_dict(weights, dtype=torch.bfloat16, device="cuda")
        else:
            # the bf16 source waits in CPU memory so the GPU holds only the quantized model (quantized on the GPU)
            weights = {key: tensor.cpu() for key, tensor in weights.items()}
            layers = block_linear_layers(weights, scheme)
            model = WanDiT.from_state_dict(quantize_layers(weights, layers, device="cuda"), dtype=torch.bfloat16,
                                           device="cuda", ops=QuantOps(layers))
        memory = torch.cuda.memory_allocated() / 2**30
        for size in args.sizes:
            latent = torch.randn(1, 16, *LATENTS[size], generator=generator, device="cuda")
            times = time_forward(model, (latent, torch.tensor([937.5], device="cuda"), context), args.repeats)
            results["runs"].append({"variant": name, "size": size, "tokens": math.prod(LATENTS[size]) // 4,
                                    "forward_s": statistics.median(times), "times_s": times,
                                    "weights_gib": memory, "peak_gib": torch.cuda.max_memory_allocated() / 2**30})
        del model
        torch.cuda.empty_cache()
    baseline = {run["size"]: run["forward_s"] for run in results["runs"] if run["variant"] == "bf16"}
    print(f"{results['card']}, torch {results['torch']}: Wan2.1 T2V-14B DiT, one forward (cfg 1), 81 frames")
    print(f"{'variant':<18}{'size':<6}{'tokens':>8}{'forward s':>11}{'vs bf16':>9}{'4 steps s':>11}"
          f"{'model GiB':>11}{'peak GiB':>10}")
    for run in results["runs"]:
        run["speedup_vs_bf16"] = baseline[run["size"]] / run["forward_s"]
        print(f"{run['variant']:<18}{run['size']:<6}{run['tokens']:>8}{run['forward_s']:>11.3f}"
              f"{run['speedup_vs_bf16']:>8.2f}x{4 * run['forward_s']:>11.2f}{run['weights_gib']:>11.1f}"
              f"{run['peak_gib']:>10.1f}")
    with open(args.json, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
