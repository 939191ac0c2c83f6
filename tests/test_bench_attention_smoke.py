"""bench/attention.py runs at tiny sizes on the CPU, sweep included (the GPU run uses the same code at real
shapes)."""

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "attention.py"


def test_attention_bench_smoke(tmp_path):
    out = tmp_path / "attention.json"
    done = subprocess.run([sys.executable, str(BENCH), "--tiny", "--sweep", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    for rows in results["lengths"].values():
        assert set(rows) == {"sage8 fp8 PV", "sage8 bf16 PV", "math SDPA"}
        for row in rows.values():
            assert math.isfinite(row["ms"]) and row["cosine"] > 0.999
    assert all(any("ms" in row for row in rows) for rows in results["sweep"].values())
    assert "sweep L=96" in done.stdout and "rel L2" in done.stdout
