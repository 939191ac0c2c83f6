"""Peak GPU memory and time of a Wan2.1 VAE decode of a 720p / 81-frame clip, tiled and untiled.

Real widths (126.9 M parameters), random weights, bf16 by default; the latent is 21 frames of 90x160. An
untiled decode that runs out of memory is recorded as such. Prints a table and writes JSON:

    python bench/vae_decode_memory.py --json vae_decode_memory.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from wan_express.models.vae2_1 import WAN21_VAE, WanVAE21
from wan_express.synthetic import random_weights_

# name, latent (frames, height, width), decode options
CASES = [
    ("720p tiled (default 64/8)", (21, 90, 160), dict(tiled=True)),
    ("720p tiled 32/8", (21, 90, 160), dict(tiled=True, tile=32, overlap=8)),
    ("720p untiled", (21, 90, 160), dict(tiled=False)),
    ("480p untiled", (21, 60, 104), dict(tiled=False)),
]
GIB = 2 ** 30


def build_model(dtype: torch.dtype) -> WanVAE21:
    model = WanVAE21(WAN21_VAE).eval().requires_grad_(False)
    random_weights_(model, seed=0)
    with torch.no_grad():  # keep random outputs mostly inside [-1, 1] so tiled/untiled differences are visible
        model.decoder.head[2].weight.mul_(0.3)
        model.decoder.head[2].bias.mul_(0.3)
    return model.to(device="cuda", dtype=dtype)


def measure(model: WanVAE21, latent: torch.Tensor, options: dict) -> tuple[dict, torch.Tensor | None]:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated()
    started = time.perf_counter()
    try:
        video = model.decode(latent, **options)
        torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError as error:
        return {"status": "OOM", "error": str(error).splitlines()[0]}, None
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated()
    return {"status": "ok", "seconds": round(seconds, 2), "peak_gib": round(peak / GIB, 3),
            "peak_above_resident_gib": round((peak - resident) / GIB, 3),
            "reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
            "output_shape": list(video.shape)}, video


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="vae_decode_memory.json", help="where to write the results")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 1
    dtype = getattr(torch, args.dtype)
    model = build_model(dtype)
    generator = torch.Generator().manual_seed(0)
    model.decode(torch.randn(1, 16, 2, 16, 16, generator=generator).cuda(), tiled=False)  # CUDA/cuDNN warm-up
    results, videos, latents = [], {}, {}
    for name, (frames, height, width), options in CASES:
        shape = (1, 16, frames, height, width)
        if shape not in latents:  # the 720p cases decode the same latent
            latents[shape] = torch.randn(shape, generator=generator).cuda()
        row, video = measure(model, latents[shape], options)
        results.append({"case": name, "latent": list(shape), **options, **row})
        if video is not None and height == 90:
            videos[name] = video.cpu()
        del video
    untiled = videos.get("720p untiled")
    for row in results:
        tiled = videos.get(row["case"])
        if untiled is not None and tiled is not None and row.get("tiled"):
            difference = (tiled - untiled).abs()
            row["vs_untiled"] = {"max_abs": round(difference.max().item(), 4),
                                 "mean_abs": round(difference.mean().item(), 5),
                                 "rmse_over_std": round((difference.pow(2).mean().sqrt() / untiled.std()).item(), 4)}
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": args.dtype,
              "weights_gib": round(sum(p.numel() * p.element_size() for p in model.parameters()) / GIB, 3),
              "results": results}
    print(f"Wan2.1 VAE decode, 81 frames, {args.dtype}, random weights on {report['device']}")
    print(f"{'case':28} {'status':6} {'time s':>7} {'peak GiB':>9} {'above resident':>15} {'rmse/std vs untiled':>20}")
    for row in results:
        print(f"{row['case']:28} {row['status']:6} {row.get('seconds', '-')!s:>7} {row.get('peak_gib', '-')!s:>9} "
              f"{row.get('peak_above_resident_gib', '-')!s:>15} "
              f"{row.get('vs_untiled', {}).get('rmse_over_std', '-')!s:>20}")
    with open(args.json, "w") as handle:
        json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
