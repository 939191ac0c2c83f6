"""Model load time of a 14B FP8 file vs the time to just read it: our `load_dit` to the GPU against reading the
file's bytes and safetensors' own `load_file` into CPU memory. Target: load_dit <= 2x the raw read.

Writes a Wan 14B-shaped LightX2V FP8 file (random codes, per-row scales, bf16 rest; ~15 GB) into ``--dir`` on the
machine's own disk, then times each reader cold (the file evicted from the page cache with posix_fadvise
DONTNEED first) and warm (read again at once). Prints a table and writes JSON; ``--tiny`` uses a tiny model on the
CPU (smoke test).

    python bench/load_time.py --json load_time.json [--dir /some/local/disk] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from random_fp8 import fp8_state_dict
from wan_express.loaders import load_dit
from wan_express.models import RELEASED_CONFIGS, WanConfig

TINY_CONFIG = WanConfig("t2v", 16, 16, dim=128, ffn_dim=256, num_heads=1, num_layers=2, text_dim=32)
FILE_NAME = "wan2.1_t2v_14b_scaled_fp8_e4m3_lightx2v_4step.safetensors"
CHUNK = 64 * 2 ** 20


def evict(path: Path) -> bool:
    """Drop ``path`` from the page cache (the next read comes from the disk); False where that is not possible."""
    if not hasattr(os, "posix_fadvise"):
        return False
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return True


def read_bytes(path: Path, device: str) -> int:
    """Every byte of the file into one preallocated buffer, in 64 MiB reads."""
    buffer = bytearray(path.stat().st_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        done = 0
        while done < len(buffer):
            done += handle.readinto(view[done:done + CHUNK])
    return done


def read_safetensors(path: Path, device: str) -> int:
    tensors = load_file(str(path))
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def read_load_dit(path: Path, device: str) -> int:
    model = load_dit(path, device=device, dtype=torch.bfloat16)
    if device == "cuda":
        torch.cuda.synchronize()
    return sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())


READERS = {"raw bytes": read_bytes, "safetensors load_file": read_safetensors, "load_dit -> device": read_load_dit}


def timed(reader, path: Path, device: str) -> tuple[float, int]:
    start = time.perf_counter()
    size = reader(path, device)
    return time.perf_counter() - start, size


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="a folder on the machine's own disk")
    parser.add_argument("--json", default="load_time.json")
    parser.add_argument("--keep", action="store_true", help="keep the written file (it is ~15 GB)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: checks the script runs")
    args = parser.parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    device = "cpu" if tiny else "cuda"
    config = TINY_CONFIG if tiny else RELEASED_CONFIGS["Wan2.1-T2V-14B"]
    folder = Path(tempfile.mkdtemp(prefix="wan_express_load_", dir=args.dir))
    path = folder / FILE_NAME
    start = time.perf_counter()
    save_file(fp8_state_dict(config), str(path))
    results = {"card": "cpu" if tiny else torch.cuda.get_device_name(), "torch": torch.__version__,
               "model": "tiny" if tiny else "Wan2.1-T2V-14B FP8 (LightX2V layout)", "file_gib": path.stat().st_size
               / 2 ** 30, "write_s": time.perf_counter() - start, "device": device, "runs": []}
    try:
        for cache in ("cold", "warm"):
            for name, reader in READERS.items():
                evicted = evict(path) if cache == "cold" else False
                if cache == "warm":
                    reader(path, device)  # the file is in the page cache now
                seconds, size = timed(reader, path, device)
                results["runs"].append({"reader": name, "cache": cache if cache == "warm" or evicted else "unknown",
                                        "seconds": seconds, "gib": size / 2 ** 30,
                                        "gib_per_s": path.stat().st_size / 2 ** 30 / seconds})
    finally:
        if not args.keep:
            path.unlink()
            folder.rmdir()
    raw = {run["cache"]: run["seconds"] for run in results["runs"] if run["reader"] == "raw bytes"}
    for run in results["runs"]:
        run["vs_raw"] = run["seconds"] / raw[run["cache"]]
    report(results)
    with open(args.json, "w") as handle:
        json.dump(results, handle, indent=1)
    return results


def report(results: dict) -> None:
    print(f"{results['card']}, torch {results['torch']}: {results['model']}, file {results['file_gib']:.2f} GiB "
          f"(written in {results['write_s']:.1f} s), load_dit to {results['device']}")
    print(f"{'reader':<24}{'cache':<8}{'seconds':>9}{'GiB/s':>8}{'vs raw':>8}")
    for run in results["runs"]:
        print(f"{run['reader']:<24}{run['cache']:<8}{run['seconds']:>9.2f}{run['gib_per_s']:>8.2f}"
              f"{run['vs_raw']:>7.2f}x")


if __name__ == "__main__":
    main()
