"""Wan2.1 I2V-14B, 480p / 81 frames, 4-step distill, end to end at real shapes with random weights.

Stages, each timed on its own (wall clock around a CUDA synchronisation) and as the whole run:
umT5-XXL text encoding (one 512-token prompt, bf16), CLIP ViT-H/14 image encoding (fp16), Wan2.1 VAE encode of the
I2V conditioning video (first frame + 80 grey frames), 4 DiT steps with the pack's sampler (LightX2V distill
schedule, cfg 1, one conditional forward per step) and the VAE decode of the result. Model loads are not timed
(weights are random and made on the GPU). Prints a table and writes JSON.

    python bench/pipeline.py --json pipeline.json [--dit fp8] [--attention auto] [--repeats 2]
    python bench/pipeline.py --tiny   # CPU smoke run at tiny widths (what tests/test_bench_pipeline_smoke.py runs)

The target (spec performance.md §6) is <= 10 s for the whole 480p 4-step I2V run on one H100/H200.
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
from wan_express.loaders.vae import build_vae
from wan_express.models import RELEASED_CONFIGS, WanDiT
from wan_express.models.clip_vision import ClipVisionConfig, ClipVisionEncoder
from wan_express.models.t5 import T5Config, UMT5Encoder
from wan_express.models.vae2_1 import WAN21_VAE, VaeConfig, WanVAE21
from wan_express.models.wan_config import WanConfig
from wan_express.sampling.conditioning import image_to_video
from wan_express.sampling.sampler import sample
from wan_express.sampling.schedules import DistillSchedule

SCHEMES = {"bf16": None, "fp8": "fp8_e4m3", "int8": "int8"}

# Tiny stand-ins for the CPU smoke run: same classes and code paths, small widths.
TINY = {
    "t5": T5Config(vocab_size=64, dim=32, attn_dim=32, ffn_dim=64, num_heads=4, num_layers=2),
    "clip": ClipVisionConfig(image_size=224, patch_size=14, dim=1280, mlp_dim=64, num_heads=16, num_layers=2),
    "vae": VaeConfig("2.1", dim=8, dec_dim=8, z_dim=16),
    "dit": WanConfig("i2v", 36, 16, clip_branch=True, dim=64, ffn_dim=128, num_heads=2, num_layers=2,
                     text_dim=32, freq_dim=32),
    "size": (64, 64), "frames": 5, "tokens": 16,
}
REAL = {
    "t5": T5Config(), "clip": ClipVisionConfig(), "vae": WAN21_VAE, "dit": RELEASED_CONFIGS["Wan2.1-I2V-14B"],
    "size": (480, 832), "frames": 81, "tokens": 512,
}


def random_state(module: torch.nn.Module, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Random official-named tensors for ``module`` (built on the meta device), made on ``device`` in fp32 then
    cast per tensor to bf16 (`scale_like_weight_`)."""
    generator = torch.Generator(device).manual_seed(seed)
    state = {}
    for key, meta in module.state_dict().items():
        values = torch.randn(tuple(meta.shape), generator=generator, device=device, dtype=torch.float32)
        state[key] = scale_like_weight_(key, values).to(torch.bfloat16)
    return state


def _meta(factory):
    with torch.device("meta"):
        return factory()


def build_models(shapes: dict, device: torch.device, dit: str, attention: str) -> dict:
    """umT5, CLIP, VAE and the I2V DiT with random weights on ``device`` (the DiT in bf16 or quantized W8A8)."""
    float_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t5 = UMT5Encoder.from_state_dict(random_state(_meta(lambda: UMT5Encoder(shapes["t5"])), device, 1),
                                     dtype=float_dtype, device=device)
    clip = ClipVisionEncoder.from_state_dict(
        random_state(_meta(lambda: ClipVisionEncoder(shapes["clip"])), device, 2),
        dtype=torch.float16 if device.type == "cuda" else torch.float32, device=device)
    vae = build_vae(random_state(_meta(lambda: WanVAE21(shapes["vae"])), device, 3), dtype=float_dtype,
                    device=device)
    weights = random_state(_meta(lambda: WanDiT(shapes["dit"])), device, 4)
    scheme = SCHEMES[dit]
    if scheme is None:
        ops = QuantOps({})
    else:
        weights = {key: tensor.cpu() for key, tensor in weights.items()}  # the GPU holds the quantized model only
        layers = block_linear_layers(weights, QuantScheme(scheme))
        weights = quantize_layers(weights, layers, device=device)
        ops = QuantOps(layers)
    ops.attention_backend = attention
    model = WanDiT.from_state_dict(weights, shapes["dit"], dtype=float_dtype, device=device, ops=ops)
    del weights
    return {"t5": t5, "clip": clip, "vae": vae, "dit": model}


def _timed(device: torch.device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def run_once(models: dict, shapes: dict, device: torch.device, seed: int) -> tuple[dict[str, float], torch.Tensor]:
    """One end-to-end run; returns the seconds per stage and the decoded video."""
    generator = torch.Generator().manual_seed(seed)
    height, width = shapes["size"]
    ids = torch.randint(1, shapes["t5"].vocab_size, (1, shapes["tokens"]), generator=generator)
    mask = torch.ones_like(ids)
    image = torch.rand(3, height, width, generator=generator) * 2 - 1
    times = {}
    with torch.no_grad():
        context, times["umT5 encode"] = _timed(device, lambda: models["t5"](ids.to(device), mask.to(device)))
        clip_fea, times["CLIP encode"] = _timed(device, lambda: models["clip"].encode(image[None].to(device)))
        conditioning, times["VAE encode"] = _timed(device, lambda: image_to_video(
            models["vae"], image, context, frames=shapes["frames"], max_area=height * width, clip_fea=clip_fea))
        latent, times["DiT, 4 steps"] = _timed(device, lambda: sample(
            models["dit"], conditioning, schedule=DistillSchedule(), seed=seed, device=device))
        video, times["VAE decode"] = _timed(device, lambda: models["vae"].decode(latent.to(device)))
    times["total"] = sum(times.values())
    return times, video


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dit", default="fp8", choices=list(SCHEMES), help="DiT precision (W8A8 for fp8/int8)")
    parser.add_argument("--attention", default="auto", help="attention option of the DiT ops")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up run")
    parser.add_argument("--tiny", action="store_true", help="tiny widths on the CPU (smoke run)")
    parser.add_argument("--json", default="pipeline.json")
    args = parser.parse_args(argv)
    shapes = TINY if args.tiny else REAL
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    models = build_models(shapes, device, args.dit, args.attention)
    _, warm_up = _timed(device, lambda: run_once(models, shapes, device, seed=0))
    runs = [run_once(models, shapes, device, seed=0)[0] for _ in range(max(args.repeats, 1))]
    stages = {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    results = {"card": card, "torch": torch.__version__, "model": "Wan2.1-I2V-14B" if not args.tiny else "tiny",
               "size": list(shapes["size"]), "frames": shapes["frames"], "dit": args.dit,
               "attention": args.attention, "warm_up_s": warm_up, "stages_s": stages, "runs_s": runs,
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
    print(f"{card}, torch {torch.__version__}: {results['model']} I2V {shapes['size'][1]}x{shapes['size'][0]}, "
          f"{shapes['frames']} frames, 4-step distill, DiT {args.dit}, attention {args.attention} "
          f"(median of {len(runs)} after a warm-up of {warm_up:.1f} s)")
    print(f"{'stage':<16}{'seconds':>10}{'share':>8}")
    for stage, seconds in stages.items():
        print(f"{stage:<16}{seconds:>10.3f}{seconds / stages['total']:>8.0%}")
    with open(args.json, "w") as handle:
        json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
