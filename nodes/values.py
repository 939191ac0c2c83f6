"""Conversions between ComfyUI's socket values and the library's tensors, shared by the nodes."""

from __future__ import annotations

import torch

from ..loaders.text_encoder import TEXT_LEN

# Precision choices of the loader nodes.
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

__all__ = ["DTYPES", "TEXT_LEN", "image_of"]


def image_of(image: torch.Tensor, index: int) -> torch.Tensor:
    """Core IMAGE [N, H, W, C] in [0, 1] -> frame ``index`` as [3, H, W] in [-1, 1] (alpha dropped)."""
    return image[index, :, :, :3].permute(2, 0, 1).float() * 2 - 1
