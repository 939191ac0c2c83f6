"""bench/dit_forward.py runs every variant end to end in its ``--tiny`` CPU mode (the GPU run uses the same code at
Wan-14B shapes): ours bf16 / FP8 / INT8 eager and compiled and the reference DiT, plus ComfyUI core's own Wan DiT
where a ComfyUI folder is given (``COMFYUI_DIR``, run with ``COMFYUI_PYTHON``, the host's interpreter, if set)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "dit_forward.py"
OURS = [f"ours {kind} {how}" for kind in ("bf16", "fp8", "int8") for how in ("eager", "compiled")]
SIZES = ["480p", "720p"]


def run_bench(tmp_path: Path, python: str, *args: str) -> tuple[dict, str]:
    out = tmp_path / "dit_forward.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([python, str(BENCH), "--tiny", "--repeats", "1", "--json", str(out), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def check_runs(results: dict, table: str, variants: list[str], sizes: list[str]) -> None:
    runs = {(run["variant"], run["size"]): run for run in results["runs"]}
    assert set(runs) == {(variant, size) for variant in variants for size in sizes}
    for (variant, size), run in runs.items():
        assert math.isfinite(run["forward_s"]) and run["forward_s"] > 0 and len(run["times_s"]) == 1
        assert math.isclose(run["vs_reference"],
                            runs[("reference bf16 compiled", size)]["forward_s"] / run["forward_s"])
        assert variant in table


def test_dit_forward_bench_tiny_runs_ours_and_the_reference(tmp_path):
    results, table = run_bench(tmp_path, sys.executable, "--sizes", "480p")  # 720p: the same code, in the test below
    check_runs(results, table, ["reference bf16 compiled", *OURS], ["480p"])
    assert all(run["vs_core_bf16"] is None for run in results["runs"])  # no ComfyUI given
    assert results["compile_mode"] == "full" and "vs reference" in table


@pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"), reason="COMFYUI_DIR (a ComfyUI folder) is not set")
def test_dit_forward_bench_tiny_runs_comfyui_cores_wan_dit(tmp_path):
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    variants = ["core bf16", "core fp8-fast", "reference bf16 compiled", "ours fp8 compiled"]
    results, table = run_bench(tmp_path, python, "--comfyui", os.environ["COMFYUI_DIR"], "--compile-mode", "block",
                               "--variants", *variants)
    check_runs(results, table, variants, SIZES)
    for run in results["runs"]:
        core = next(r for r in results["runs"] if r["variant"] == "core bf16" and r["size"] == run["size"])
        assert math.isclose(run["vs_core_bf16"], core["forward_s"] / run["forward_s"])
    assert {run["operations"] for run in results["runs"] if run["variant"].startswith("core")} >= {
        "disable_weight_init"}


def test_profile_forward_bench_tiny_groups_every_op_of_one_forward(tmp_path):
    """bench/profile_forward.py: one profiled forward; the groups add up to the total and the GEMMs are found."""
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, str(BENCH.with_name("profile_forward.py")), "--tiny", "--json", str(out)],
                          cwd=tmp_path, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["variant"] == "ours fp8 eager" and results["kernel_seconds"] > 0
    assert math.isclose(sum(results["groups"].values()), results["kernel_seconds"], rel_tol=1e-9)
    assert results["groups"]["gemm"] > 0 and "gemm" in done.stdout
