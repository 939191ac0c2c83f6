"""The 8-bit attention's Triton kernels on the CPU through Triton's interpreter, against the eager emulation of the
same arithmetic and against fp32 attention.

The kernels run in a fresh process (`attention_interpreter_checks.py`) with TRITON_INTERPRET=1: head dims 64 and
128, partial tiles, query and key lengths that differ (cross-attention), Q and K with and without a large shared
mean, q and k as transposed views. Skipped without Triton and on CUDA machines (there `test_attention_gpu.py`
runs the compiled kernels).

Kernel vs emulation: the interpreter truncates the final bf16 cast (an error in [0, 1) bf16 ulp, rms ≈ 0.0033
relative, next to the emulation's rounding to nearest, rms ≈ 0.0016), and fp32 sums in another order can move a
P code by one e4m3 step now and then: bound 8e-3 (measured 0.0039-0.0041).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .test_attention_reference import BOUNDS, MIN_COSINE

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
                                reason="interpreter tests run on CPU machines with Triton installed")

VS_EMULATION = 8e-3
CASES = [f"d={d} Lq={lq} Lk={lk} mean={mean} pv=fp8" for d, lq, lk in [(64, 75, 75), (128, 70, 37), (64, 40, 100)]
         for mean in (0.0, 4.0)]


@pytest.fixture(scope="module")
def results():
    script = Path(__file__).with_name("attention_interpreter_checks.py")
    done = subprocess.run([sys.executable, str(script)], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_its_emulation(results, case):
    result = results[case]
    assert result["finite"]
    assert result["vs_emulation"]["rel_l2"] <= VS_EMULATION


@pytest.mark.parametrize("case", CASES)
def test_kernel_is_within_the_fp32_bounds(results, case):
    error = results[case]["vs_fp32"]
    assert error["rel_l2"] <= BOUNDS["fp8"] and error["cosine"] >= MIN_COSINE


def test_output_shape_follows_the_queries(results):
    assert results["d=128 Lq=70 Lk=37 mean=0.0 pv=fp8"]["shape"] == [1, 2, 70, 128]
    assert results["d=64 Lq=40 Lk=100 mean=4.0 pv=fp8"]["shape"] == [1, 2, 40, 64]
