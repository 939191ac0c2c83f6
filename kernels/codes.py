"""The 8-bit weight and activation codes: their torch dtypes, largest magnitudes and the scale floor.

Shared by the reference quantizers (`act_quant`, `quantize`) and the Triton kernels (`triton_quant`), which import
nothing else of each other at module level.
"""

from __future__ import annotations

import torch

# Largest magnitude of each code: e4m3's largest finite value, and the symmetric int8 range.
QMAX = {"fp8_e4m3": 448.0, "int8": 127.0}
CODE_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "int8": torch.int8}
# Floor under a row's amax so that all-zero rows (e.g. padding) get finite scales and zero codes.
MIN_AMAX = 1e-8
# Weight dtypes after which T5's RMSNorm rounds (its ``type_as(weight)``); the Triton kernel takes the code.
HALF_DTYPES = {torch.bfloat16: 1, torch.float16: 2}
