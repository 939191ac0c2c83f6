"""Random Wan DiT weights at real shapes in the LightX2V FP8 layout, for the memory and load-time benchmarks.

`fp8_state_dict(config, seed)` -> official-named CPU tensors: every attention / FFN block linear as ``X.weight``
float8_e4m3fn codes + ``X.weight_scale`` fp32 ``[out, 1]`` (LightX2V ``scaled_fp8_e4m3``), everything else bf16
with O(1)-keeping values. Generated on the GPU one tensor at a time when there is one (the GPU never holds more
than one tensor), so a 14B expert takes seconds, not minutes.
"""

from __future__ import annotations

import math

import torch

from wan_express.kernels.quantized import QuantScheme
from wan_express.loaders.dit.quant_targets import is_quantization_target
from wan_express.models import WanConfig, WanDiT

FP8 = QuantScheme("fp8_e4m3")


def official_shapes(config: WanConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {key: tuple(tensor.shape) for key, tensor in WanDiT(config).state_dict().items()}


def fp8_state_dict(config: WanConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-named tensors on the CPU; quantized block linears as FP8 codes with per-row scales."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device).manual_seed(seed)
    tensors = {}
    for key, shape in official_shapes(config).items():
        if is_quantization_target(key, shape):
            codes = torch.randn(shape, generator=generator, device=device, dtype=torch.bfloat16).mul_(64)
            tensors[key] = codes.clamp_(-448, 448).to(torch.float8_e4m3fn).cpu()
            scale = torch.full((shape[0], 1), 1 / (64 * math.sqrt(shape[1])), dtype=torch.float32)
            tensors[key.removesuffix("weight") + "weight_scale"] = scale
            continue
        values = torch.randn(shape, generator=generator, device=device, dtype=torch.bfloat16)
        tensors[key] = scale_like_weight_(key, values).cpu()
    return tensors


def scale_like_weight_(key: str, values: torch.Tensor) -> torch.Tensor:
    """Scale standard normal ``values`` in place for tensor ``key`` so activations stay O(1): matrices
    ~ N(0, 1/fan_in), norm weights ~ 1, modulation tables, position tables and biases small."""
    shape = values.shape
    if "modulation" in key:
        values.mul_(0.5 / math.sqrt(shape[-1]))
    elif len(shape) >= 2 and "pos_embedding" not in key and "emb_pos" not in key:
        values.mul_(1 / math.sqrt(math.prod(shape[1:])))
    elif key.endswith("weight"):
        values.mul_(0.1).add_(1)
    else:
        values.mul_(0.1)
    return values


def quantized_layers(tensors: dict[str, torch.Tensor]) -> dict[str, QuantScheme]:
    """The `QuantOps` table of an `fp8_state_dict`."""
    return {key.removesuffix(".weight_scale"): FP8 for key in tensors if key.endswith(".weight_scale")}
