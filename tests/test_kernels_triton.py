"""Our Triton kernels (W8A8 GEMM, fused activation quantization) on the CPU through Triton's interpreter.

Both GEMM kernels (tiled, and persistent with TMA descriptors) and every fused quantizer run in INT8, the GEMMs
also in FP8 at K a multiple of the tile. The kernels run in a fresh process (`triton_interpreter_checks.py`)
with TRITON_INTERPRET=1; this file asserts on the errors it reports. Skipped without Triton and on CUDA machines
(there `test_kernels_gpu.py` runs the compiled kernels, FP8 quantization included).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
                                reason="interpreter tests run on CPU machines with Triton installed")

GEMM_REL_TOL = 8e-3  # bf16 output rounding
QUANTIZERS = ["rows int8", "norm_modulate int8 per_token=False", "norm_modulate int8 per_token=True",
              "gelu_tanh int8", "rms_norm int8", "rms_norm int8 bf16 weight", "layer_norm int8"]


@pytest.fixture(scope="module")
def results():
    script = Path(__file__).with_name("triton_interpreter_checks.py")
    done = subprocess.run([sys.executable, str(script)], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", [f"{kernel}gemm {codes} K={K}" for kernel in ("", "persistent ")
                                  for codes, K in [("int8", 64), ("int8", 80), ("fp8_e4m3", 64)]])
def test_triton_gemm_applies_row_and_column_scales_and_bias(results, case):
    assert results[case]["finite"], "unwritten (NaN-poisoned) outputs remain"
    assert results[case]["rel_max_error"] <= GEMM_REL_TOL, results[case]


@pytest.mark.parametrize("case", QUANTIZERS)
def test_fused_int8_quantizers_match_reference(results, case):
    result = results[case]
    assert result["scale_rel_error"] <= 1e-5, result
    # fp32 rounding differences may move a value sitting on a .5 boundary by one code, rarely.
    assert result["max_code_steps"] <= 1 and result["mismatched_fraction"] <= 1e-2, result
