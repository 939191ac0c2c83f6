"""Node: load a Wan DiT (or a Wan2.2 A14B expert pair) from a model folder or single file."""

from __future__ import annotations

import torch

from ..loaders import load_dit
from . import host

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
QUANTIZATION = ("auto", "fp8", "int8", "bf16")


class WanExpressDiTLoader:
    """Loads a Wan2.1 / Wan2.2 DiT (official folder or single safetensors) for the Wan Express sampler."""

    CATEGORY = "Wan Express/loaders"
    DESCRIPTION = ("Load a Wan DiT: an official folder from models/wan_express/ (config.json + shards, or a Wan2.2 "
                   "A14B folder with high_noise_model/ and low_noise_model/) or a single safetensors from "
                   "models/diffusion_models/ (LightX2V, ComfyUI or official names; BF16, FP8 or INT8). The "
                   "architecture is read from the weights.")
    RETURN_TYPES = ("WANEXPRESS_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The loaded Wan diffusion transformer (a high/low pair for Wan2.2 A14B folders).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (host.list_models("diffusion_models") + host.lightx2v_configs(),
                          {"tooltip": "Model folder (ends with /), file, or a LightX2V config (.json)."}),
                "quantization": (list(QUANTIZATION), {"default": "auto", "tooltip": "auto keeps what the file "
                                 "holds; fp8/int8 quantize float weights per channel at load; bf16 runs unquantized."}),
                "dtype": (list(DTYPES), {"default": "bf16", "tooltip": "Precision of the float matmul weights; "
                                         "norms, modulation and the head always run in fp32."}),
            },
            "optional": {
                "file": ("STRING", {"default": "", "tooltip": "Only for a folder holding several models (e.g. "
                                    "bf16 + fp8 + int8 side by side): the file name to load. Empty picks the "
                                    "only one."}),
            },
        }

    def load(self, model: str, quantization: str, dtype: str, file: str = ""):
        return (load_dit(host.resolve_model("diffusion_models", model), file=file.strip() or None, quantization=quantization,
                         dtype=DTYPES[dtype], device=host.torch_device()),)
