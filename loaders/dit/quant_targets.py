"""Which DiT layers are quantization targets: LightX2V's converter policy (formats.md §4.1), the DiT's `Targets`
for `..quantization.quantized` and the export.

`is_quantization_target(name, shape)` decides one tensor; `block_linear_layers(state, scheme)` builds the
`QuantOps` layer table of every target in a state dict (for tests and benchmarks that quantize eagerly with
`kernels.quantize.quantize_layers`).
"""

from __future__ import annotations

from typing import Mapping

import torch

from ...kernels.quantized import QuantScheme
from .formats import QUANTIZED_PARTS


def is_quantization_target(name: str, shape: tuple[int, ...]) -> bool:
    """LightX2V's converter rule: a 2-D ``.weight`` whose third dotted part is self_attn, cross_attn or ffn."""
    parts = name.split(".")
    return len(shape) == 2 and parts[-1] == "weight" and len(parts) > 2 and parts[2] in QUANTIZED_PARTS


def block_linear_layers(state: Mapping[str, torch.Tensor], scheme: QuantScheme) -> dict[str, QuantScheme]:
    """The `QuantOps` layer table quantizing every target of an official-named state dict to ``scheme``."""
    return {key.removesuffix(".weight"): scheme for key, tensor in state.items()
            if is_quantization_target(key, tuple(tensor.shape))}
