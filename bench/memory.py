"""Wan2.2 A14B FP8 pair (random weights at real 14B shapes): both experts resident (uncapped) vs block streaming
under a 24 GB card's cap (`torch.cuda.set_per_process_memory_fraction`), expert switch time (pinned non_blocking
vs pageable, both ways), and a memory snapshot of one 720p forward that names the allocations live at its peak.

Per size: the resident run measures the step time (one cfg-1 forward, median) and the activation peak above the
weights; the capped run gives the weights ``cap - activation peak - margin`` as their budget (`models.streaming`),
then runs the 4-step distill order high, high, low, low with the look-ahead prefetch before the switch, as the
sampler does. Prints a table and writes JSON; ``--tiny`` runs the same code on a tiny model on the CPU (smoke test).

    python bench/memory.py --json memory.json [--sizes 480p 720p] [--cap-gb 24] [--snapshot snap.pickle]
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import os
import pickle
import statistics
import time
from pathlib import Path

# Side-stream copies leave freed blocks that the compute stream cannot reuse; expandable segments keep that slack
# from turning into an out-of-memory error under a tight cap. Set before CUDA starts (the caller's value wins).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

import wan_express
from random_fp8 import fp8_state_dict, quantized_layers
from wan_express.kernels.quantized import QuantOps
from wan_express.models import RELEASED_CONFIGS, WanConfig, WanDiT
from wan_express.models.residency import ModelResidency
from wan_express.models.streaming import (DEFAULT_PREFETCH, GIB, WeightPool, block_bytes, prefetch_weights,
                                          stream_blocks)

LATENTS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}  # 81 frames
TINY_CONFIG = WanConfig("t2v", 16, 16, dim=128, ffn_dim=256, num_heads=1, num_layers=5, text_dim=32)
TINY_LATENT = (3, 8, 12)
MARGIN_GIB = 2.0  # allocator slack kept free under the cap (1 GiB was too little: both sizes ran out at 24 GiB)


class Clock:
    """Seconds of GPU work (CUDA events), or wall time on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def build_pair(config: WanConfig) -> tuple[WanDiT, WanDiT]:
    """Two FP8 experts on the CPU (distinct random weights), built the way `load_dit` builds a LightX2V file."""
    experts = []
    for seed in (0, 1):
        tensors = fp8_state_dict(config, seed)
        experts.append(WanDiT.from_state_dict(tensors, config=config, dtype=torch.bfloat16, device="cpu",
                                              ops=QuantOps(quantized_layers(tensors))))
        del tensors
    return experts[0], experts[1]


def inputs(config: WanConfig, latent: tuple[int, int, int], device: torch.device):
    generator = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, config.out_dim, *latent, generator=generator, device=device)
    context = torch.randn(1, 512, config.text_dim, generator=generator, device=device, dtype=torch.bfloat16)
    return x, torch.tensor([937.5], device=device), context


def peak_bytes(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def reset_peak(device: torch.device) -> int:
    """Restart the peak counter; returns the bytes allocated now."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def offload(pair) -> None:
    for model in pair:
        ModelResidency.of(model).offload()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


@torch.no_grad()
def resident_run(pair, config, latent, device, repeats: int) -> dict:
    """Both experts on the device; the step time and the activation peak above the weights."""
    pool = WeightPool(None)
    for model in pair:
        stream_blocks(model, None, device, pool=pool)
    feed = inputs(config, latent, device)
    pair[1](*feed)  # loads the low expert (warm-up)
    pair[0](*feed)  # and the high one; backend choice and autotuning happen here
    before = reset_peak(device)
    times = []
    for _ in range(repeats):
        with Clock(device) as clock:
            pair[0](*feed)
        times.append(clock.seconds)
    return {"mode": "resident", "step_s": statistics.median(times), "times_s": times,
            "weights_gib": before / GIB, "peak_gib": peak_bytes(device) / GIB,
            "activation_peak_gib": (peak_bytes(device) - before) / GIB}


@torch.no_grad()
def streaming_run(pair, config, latent, device, budget: int) -> dict:
    """The 4-step order high, high, low, low under ``budget`` bytes of weights for the pair."""
    pool = WeightPool(budget)
    streamers = [stream_blocks(model, budget, device, pool=pool) for model in pair]
    feed = inputs(config, latent, device)
    pair[0](*feed)  # warm-up: the high expert's resident part comes in
    reset_peak(device)
    steps = []
    for step, expert in enumerate((0, 0, 1, 1)):
        if step == 1:
            prefetch_weights(pair[1])  # the sampler's look-ahead before the last high step
        with Clock(device) as clock:
            pair[expert](*feed)
        steps.append(clock.seconds)
    plan = streamers[0].plan
    return {"mode": "streaming", "weight_budget_gib": budget / GIB, "times_s": steps,
            "step_s": statistics.median([steps[0], steps[3]]), "switch_step_s": steps[2],
            "peak_gib": peak_bytes(device) / GIB, "resident_blocks": len(plan.resident),
            "streamed_blocks": len(plan.streamed), "prefetch": plan.prefetch}


@torch.no_grad()
def switch_times(model, device) -> dict:
    """Moving one expert's weights: drop + pinned non_blocking load on the side stream, vs copying back to pageable
    memory and loading from it synchronously (ComfyUI core's offload and load)."""
    residency = ModelResidency.of(model)
    residency.offload()
    with Clock(device) as clock:
        residency.prefetch(device)
        residency.ready(device)
    pinned = clock.seconds
    on_device = [slot.current().data for group in residency.groups for slot in group.slots.values()]
    with Clock(device) as clock:
        pageable = [tensor.to("cpu") for tensor in on_device]
    back = clock.seconds
    with Clock(device) as clock:
        loaded = [tensor.to(device) for tensor in pageable]
    forth = clock.seconds
    del pageable, loaded, on_device
    residency.offload()
    return {"expert_gib": residency.nbytes / GIB, "pinned": residency.pinned, "pinned_load_s": pinned,
            "pageable_offload_s": back, "pageable_load_s": forth, "pageable_switch_s": back + forth}


def peak_allocations(snapshot: dict, top: int = 15) -> dict:
    """The allocations live at the peak of a `torch.cuda.memory._snapshot`, summed by the first Wan Express stack
    frame that made them (else the innermost frame)."""
    live, total, peak, at_peak = {}, 0, 0, {}
    for event in snapshot["device_traces"][0] if snapshot["device_traces"] else []:
        if event["action"] == "alloc":
            live[event["addr"]] = (event["size"], event.get("frames", []))
            total += event["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif event["action"] == "free_requested" and event["addr"] in live:
            total -= live.pop(event["addr"])[0]
    package = str(Path(wan_express.__file__).resolve().parent) + "/"

    @functools.lru_cache(maxsize=None)
    def resolved(filename: str) -> str:  # frames name files as imported (through links), the package as resolved
        return str(Path(filename).resolve())

    by_frame = collections.defaultdict(lambda: [0, 0])
    for size, frames in at_peak.values():
        ours = [dict(frame, filename=resolved(frame["filename"])) for frame in frames
                if resolved(frame["filename"]).startswith(package)]
        frame = (ours or frames or [{"filename": "?", "line": 0, "name": "?"}])[0]
        where = f"{frame['filename'].removeprefix(package)}:{frame['line']} {frame['name']}"
        by_frame[where][0] += size
        by_frame[where][1] += 1
    ranked = sorted(by_frame.items(), key=lambda item: -item[1][0])[:top]
    return {"recorded_peak_gib": peak / GIB,
            "top": [{"where": where, "gib": size / GIB, "tensors": count} for where, (size, count) in ranked]}


@torch.no_grad()
def snapshot_run(model, config, device, path: str) -> dict:
    """One resident 720p forward with allocation history; the snapshot is written to ``path``."""
    stream_blocks(model, None, device)
    feed = inputs(config, LATENTS["720p"], device)
    model(*feed)
    before = reset_peak(device)
    torch.cuda.memory._record_memory_history(stacks="python", max_entries=1_000_000)
    model(*feed)
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    with open(path, "wb") as handle:
        pickle.dump(snapshot, handle)
    found = peak_allocations(snapshot)
    found.update(weights_gib=before / GIB, peak_gib=peak_bytes(device) / GIB, path=path)
    return found


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["480p", "720p"], choices=list(LATENTS))
    parser.add_argument("--cap-gb", type=float, default=24.0, help="the card to emulate, GiB of device memory (a 24 GB card has 24 GiB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="memory.json")
    parser.add_argument("--snapshot", help="write the 720p forward's allocation history here (CUDA only)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: checks the script runs")
    args = parser.parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    repeats = 1 if tiny else args.repeats
    device = torch.device("cpu") if tiny else torch.device("cuda", torch.cuda.current_device())
    config = TINY_CONFIG if tiny else RELEASED_CONFIGS["Wan2.2-T2V-A14B"]
    latents = {"tiny": TINY_LATENT} if tiny else {size: LATENTS[size] for size in args.sizes}
    pair = build_pair(config)
    expert_bytes = ModelResidency.of(pair[0]).nbytes
    ModelResidency.of(pair[1])
    results = {"card": "cpu" if tiny else torch.cuda.get_device_name(), "torch": torch.__version__,
               "model": "tiny" if tiny else "Wan2.2-T2V-A14B FP8", "expert_gib": expert_bytes / GIB,
               "cap_gib": None if tiny else args.cap_gb, "runs": []}
    total = torch.cuda.get_device_properties(device).total_memory if not tiny else None
    for size, latent in latents.items():
        resident = resident_run(pair, config, latent, device, repeats)
        offload(pair)
        if tiny:  # a budget that keeps one block and streams the others
            sizes, rest = block_bytes(pair[0])
            budget = rest + (1 + DEFAULT_PREFETCH + 1) * max(sizes)
        else:
            cap = args.cap_gb * GIB
            budget = int(cap - (resident["activation_peak_gib"] + MARGIN_GIB) * GIB)
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
        try:
            streaming = streaming_run(pair, config, latent, device, budget)
        except Exception as error:  # a size that does not fit under the cap (OOM) is a result too
            streaming = {"mode": "streaming", "weight_budget_gib": budget / GIB, "error": str(error)[:300]}
        finally:
            if not tiny:
                torch.cuda.set_per_process_memory_fraction(1.0, device)
            offload(pair)
        streaming["vs_resident"] = streaming["step_s"] / resident["step_s"] if "step_s" in streaming else None
        for run in (resident, streaming):
            results["runs"].append({"size": size, **run})
    results["switch"] = switch_times(pair[1], device)
    if args.snapshot and not tiny:
        offload(pair)
        results["snapshot"] = snapshot_run(pair[0], config, device, args.snapshot)
    report(results)
    with open(args.json, "w") as handle:
        json.dump(results, handle, indent=1)
    return results


def report(results: dict) -> None:
    print(f"{results['card']}, torch {results['torch']}: {results['model']} pair, expert "
          f"{results['expert_gib']:.2f} GiB, cap {results['cap_gib'] or '-'} GiB")
    print(f"{'size':<7}{'mode':<11}{'step s':>8}{'vs res':>8}{'switch s':>10}{'peak GiB':>10}{'budget GiB':>12}"
          f"{'blocks res/str':>16}")
    for run in results["runs"]:
        if "error" in run:
            print(f"{run['size']:<7}{run['mode']:<11}  did not run: {run['error']}")
            continue
        ratio = f"{run['vs_resident']:.2f}x" if run.get("vs_resident") else "-"
        switch = f"{run['switch_step_s']:.3f}" if "switch_step_s" in run else "-"
        budget = f"{run['weight_budget_gib']:.2f}" if "weight_budget_gib" in run else "-"
        blocks = f"{run['resident_blocks']}/{run['streamed_blocks']}" if "resident_blocks" in run else "all"
        print(f"{run['size']:<7}{run['mode']:<11}{run['step_s']:>8.3f}{ratio:>8}{switch:>10}{run['peak_gib']:>10.2f}"
              f"{budget:>12}{blocks:>16}")
    switch = results["switch"]
    print(f"expert switch ({switch['expert_gib']:.2f} GiB): pinned non_blocking load {switch['pinned_load_s']:.3f} s "
          f"(pinned: {switch['pinned']}); pageable offload + load {switch['pageable_offload_s']:.3f} + "
          f"{switch['pageable_load_s']:.3f} s")
    if "snapshot" in results:
        snap = results["snapshot"]
        print(f"720p forward: peak {snap['peak_gib']:.2f} GiB, weights {snap['weights_gib']:.2f} GiB, allocations "
              f"made during the forward live at its peak {snap['recorded_peak_gib']:.2f} GiB; by where they were made:")
        for row in snap["top"]:
            print(f"  {row['gib']:8.3f} GiB {row['tensors']:5d} tensors  {row['where']}")


if __name__ == "__main__":
    main()
