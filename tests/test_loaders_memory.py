"""Peak host memory while loading stays within the final model size plus the largest single tensor.

A synthetic ~39 MB fp32 model is loaded to bf16, then quantized to int8, in a fresh subprocess; before each load
the resident-set peak is reset (``/proc/self/clear_refs``), after it the peak is read (``VmHWM``). A loader that
built a whole fp32 copy would need twice the final bf16 size.

glibc serves allocations above its mmap threshold (at most 32 MB) with their own mappings and returns them on
free; below it, freed buffers stay in the heap. Real Wan tensors (up to 280 MB in fp32) are all above it, our
tiny ones are not, so the subprocess pins the threshold at 128 KiB to give the tiny model the allocation
behaviour of a real one; the bound then measures what the loader keeps alive.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wan_express.models import WanConfig

from .loader_files import save, tiny_weights

# dim 256 keeps it quick; the 4096-wide text embedding makes one tensor clearly the largest (4 MiB in fp32).
CONFIG = WanConfig("t2v", 16, 16, dim=256, ffn_dim=1024, num_heads=2, num_layers=8, text_dim=4096)
# Python objects, the allocator's bookkeeping and page rounding: small against the 20 MB model.
SLACK_BYTES = 2 * 1024 * 1024

MEASURE = r"""
import gc, json, sys
import torch
from wan_express.loaders import load_dit

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

path, warm_up = sys.argv[1], sys.argv[2]
for quantization in ("bf16", "int8"):
    # Warm up on a tiny model: the library code pages a first load touches count as resident memory too.
    load_dit(warm_up, quantization=quantization)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak resident set to the current one
    before = status("VmRSS")
    model = load_dit(path, quantization=quantization, dtype=torch.bfloat16)
    peak = status("VmHWM")
    final = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(json.dumps({"quantization": quantization, "growth": peak - before, "final": final}))
    del model
    gc.collect()
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to read peak memory")
def test_peak_host_memory_is_bounded_by_model_plus_largest_tensor(tmp_path):
    weights = {key: tensor.float() for key, tensor in tiny_weights(CONFIG, seed=1).items()}
    path = save(weights, tmp_path / "model_fp32.safetensors")
    warm_up = save(tiny_weights(seed=2), tmp_path / "tiny.safetensors")
    largest = max(t.numel() * t.element_size() for t in weights.values())
    file_size = sum(t.numel() * t.element_size() for t in weights.values())
    del weights
    result = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(warm_up)], capture_output=True,
                            text=True, check=True, timeout=120,
                            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)})
    runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [run["quantization"] for run in runs] == ["bf16", "int8"]
    for run in runs:
        print(f"{run['quantization']}: peak growth {run['growth'] / 2**20:.1f} MiB, final model "
              f"{run['final'] / 2**20:.1f} MiB, largest tensor {largest / 2**20:.1f} MiB, file "
              f"{file_size / 2**20:.1f} MiB")
        assert run["growth"] <= run["final"] + largest + SLACK_BYTES
        assert run["final"] < file_size  # a full fp32 copy would break the bound
