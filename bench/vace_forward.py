"""Wan2.1 VACE-14B DiT forwards at real shapes: the hint overhead over the plain T2V forward, in bf16 and FP8.

Random weights (fan-in scaled normals), one conditional forward (4-step distill, cfg 1) on an 81-frame 480p latent
(32,760 tokens), the same VACE model called with and without ``vace_context`` (without it, it is the T2V-14B
forward), bf16 and FP8 W8A8 (per-channel, quantized at load as ``load_dit(..., quantization="fp8")`` does). Warmed
up once, timed with CUDA events, median reported; prints a table and writes JSON. ``--tiny`` runs a 2-block model
on the CPU (a smoke test of the script, no timing meaning).

    python bench/vace_forward.py --json vace_forward.json [--repeats 3] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from random_fp8 import scale_like_weight_  # bench/, the script's folder

from wan_express.kernels.quantize import quantize_layers
from wan_express.kernels.quantized import QuantOps, QuantScheme
from wan_express.loaders.dit.quant_targets import block_linear_layers
from wan_express.models import RELEASED_CONFIGS, WanConfig, WanVaceDiT

LATENT_480P = (21, 60, 104)
TINY = WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64, vace_layers=(0, 1),
                 vace_in_dim=96)


def random_weights(config: WanConfig, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in WanVaceDiT(config).state_dict().items()}
    generator = torch.Generator(device).manual_seed(seed)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return {key: scale_like_weight_(key, torch.randn(shape, generator=generator, device=device, dtype=dtype))
            for key, shape in shapes.items()}


def timed(model, inputs: dict, repeats: int, cuda: bool) -> float:
    """Median seconds of ``repeats`` forwards after one warm-up."""
    with torch.no_grad():
        model(**inputs)
        times = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(**inputs)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                begin = time.perf_counter()
                model(**inputs)
                times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="vace_forward.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="2-block model on the CPU (smoke test)")
    args = parser.parse_args()
    cuda = not args.tiny
    device = "cuda" if cuda else "cpu"
    config = TINY if args.tiny else RELEASED_CONFIGS["Wan2.1-VACE-14B"]
    frames, height, width = (2, 4, 6) if args.tiny else LATENT_480P
    generator = torch.Generator(device).manual_seed(1)
    latent = {"x": torch.randn(1, 16, frames, height, width, generator=generator, device=device),
              "t": torch.tensor([875.0], device=device),
              "context": torch.randn(1, 512, config.text_dim, generator=generator, device=device)}
    vace = torch.randn(1, 96, frames, height, width, generator=generator, device=device)
    weights = random_weights(config, device)
    rows = []
    for precision in ("bf16", "fp8"):
        if precision == "fp8" and not (cuda and torch.cuda.get_device_capability() >= (8, 9)):
            continue
        state, layers = weights, {}
        if precision == "fp8":
            layers = block_linear_layers(weights, QuantScheme("fp8_e4m3"))
            state = quantize_layers(weights, layers)
        model = WanVaceDiT.from_state_dict(state, config=config, dtype=torch.bfloat16 if cuda else torch.float32,
                                           device=device, ops=QuantOps(layers))
        plain = timed(model, latent, args.repeats, cuda)
        with_hints = timed(model, {**latent, "vace_context": vace}, args.repeats, cuda)
        rows.append({"precision": precision, "t2v_s": plain, "vace_s": with_hints, "overhead": with_hints / plain - 1,
                     "vace_blocks": len(config.vace_layers), "tokens": frames * height * width // 4})
        del model, state
        if cuda:
            torch.cuda.empty_cache()
    print(f"{'precision':>9} {'T2V s':>8} {'VACE s':>8} {'overhead':>9}")
    for row in rows:
        print(f"{row['precision']:>9} {row['t2v_s']:8.3f} {row['vace_s']:8.3f} {row['overhead']:9.1%}")
    with open(args.json, "w") as handle:
        json.dump({"config": "tiny" if args.tiny else "Wan2.1-VACE-14B", "latent": [frames, height, width],
                   "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
