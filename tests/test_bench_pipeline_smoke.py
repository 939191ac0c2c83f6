"""bench/pipeline.py runs end to end at tiny widths on the CPU (the GPU run uses the same code at real shapes)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "pipeline.py"
STAGES = ["umT5 encode", "CLIP encode", "VAE encode", "DiT, 4 steps", "VAE decode", "total"]


@pytest.mark.parametrize("dit", ["fp8"])
def test_pipeline_bench_smoke(dit, tmp_path):
    out = tmp_path / "pipeline.json"
    done = subprocess.run([sys.executable, str(BENCH), "--tiny", "--dit", dit, "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert list(results["stages_s"]) == STAGES
    assert all(math.isfinite(seconds) and seconds >= 0 for seconds in results["stages_s"].values())
    assert math.isclose(results["stages_s"]["total"], sum(results["runs_s"][0][s] for s in STAGES[:-1]))
    for stage in STAGES:
        assert stage in done.stdout
