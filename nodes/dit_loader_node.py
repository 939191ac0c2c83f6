"""Node: load a Wan DiT from a model folder or single file."""

from __future__ import annotations

import torch

from ..loaders import load_dit
from . import host

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class WanExpressDiTLoader:
    """Loads a Wan2.1 / Wan2.2 DiT (official folder or single safetensors) for the Wan Express sampler."""

    CATEGORY = "Wan Express/loaders"
    DESCRIPTION = ("Load a Wan DiT: an official folder from models/wan_express/ (config.json + shards) or a "
                   "single safetensors from models/diffusion_models/. The architecture is read from the weights.")
    RETURN_TYPES = ("WANEXPRESS_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The loaded Wan diffusion transformer.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (host.list_dit_models(), {"tooltip": "Model folder (ends with /) or file."}),
                "dtype": (list(DTYPES), {"default": "bf16", "tooltip": "Matmul weight precision; norms, "
                                         "modulation and the head always run in fp32."}),
            }
        }

    def load(self, model: str, dtype: str):
        return (load_dit(host.resolve_dit_model(model), dtype=DTYPES[dtype], device=host.torch_device()),)
