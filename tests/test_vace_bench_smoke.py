"""bench/vace_forward.py runs end to end on a tiny VACE model on the CPU (the GPU run uses the same code at real
shapes)."""

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "vace_forward.py"


def test_vace_forward_bench_smoke(tmp_path):
    out = tmp_path / "vace.json"
    done = subprocess.run([sys.executable, str(BENCH), "--tiny", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["precision"] == "bf16" and row["vace_blocks"] == 2
    assert math.isfinite(row["overhead"]) and "overhead" in done.stdout
