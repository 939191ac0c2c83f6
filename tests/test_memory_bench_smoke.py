"""bench/memory.py and bench/load_time.py run end to end in their ``--tiny`` CPU mode (the same code paths as on a
GPU, on a tiny model) and write the JSON their tables come from."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{script}.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, str(BENCH / script), "--tiny", "--json", str(out), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_memory_bench_tiny_streams_under_its_budget_and_times_the_switch(tmp_path):
    results, table = run_bench("memory.py", tmp_path)
    resident, streaming = results["runs"]
    assert (resident["mode"], streaming["mode"]) == ("resident", "streaming")
    assert "error" not in streaming, streaming
    assert streaming["streamed_blocks"] > 0 and streaming["resident_blocks"] > 0
    assert len(streaming["times_s"]) == 4 and streaming["vs_resident"] > 0
    switch = results["switch"]
    assert switch["expert_gib"] == results["expert_gib"] and switch["pinned"] is False  # no CUDA, no pinning
    assert "expert switch" in table and "streaming" in table


def test_load_time_bench_tiny_times_every_reader_cold_and_warm(tmp_path):
    results, table = run_bench("load_time.py", tmp_path, "--dir", str(tmp_path))
    runs = {(run["reader"], run["cache"]) for run in results["runs"]}
    readers = ("raw bytes", "safetensors load_file", "load_dit -> device")
    assert {(reader, "warm") for reader in readers} <= runs and len(runs) == 6
    assert all(run["seconds"] > 0 and run["vs_raw"] > 0 for run in results["runs"])
    assert list(tmp_path.glob("wan_express_load_*")) == []  # the written file is removed
    assert "load_dit -> device" in table


def test_peak_allocations_sums_what_is_live_at_the_peak_by_our_own_frame(monkeypatch):
    import importlib.util

    import wan_express

    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH / "memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ours = {"filename": str(Path(wan_express.__file__).resolve().parent / "models" / "wan_dit.py"), "line": 10,
            "name": "forward"}
    torch_frame = {"filename": "/site-packages/torch/nn/functional.py", "line": 1, "name": "linear"}
    gib = 2 ** 30
    trace = [{"action": "alloc", "addr": 1, "size": 2 * gib, "frames": [torch_frame, ours]},
             {"action": "alloc", "addr": 2, "size": gib, "frames": [torch_frame]},
             {"action": "free_requested", "addr": 1, "size": 2 * gib},
             {"action": "free_completed", "addr": 1, "size": 2 * gib},
             {"action": "alloc", "addr": 3, "size": gib // 2, "frames": [ours]}]
    found = bench.peak_allocations({"device_traces": [trace]})
    assert found["recorded_peak_gib"] == 3.0
    assert found["top"] == [{"where": "models/wan_dit.py:10 forward", "gib": 2.0, "tensors": 1},
                            {"where": "/site-packages/torch/nn/functional.py:1 linear", "gib": 1.0, "tensors": 1}]
