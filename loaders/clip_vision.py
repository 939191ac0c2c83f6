"""Load the CLIP ViT-H/14 vision tower: the official open-clip XLM-R ``.pth`` or ComfyUI's ``clip_vision_h``.

Entry point: `load_clip_vision(path) -> ClipVisionEncoder` (``.encode(images)``). The official file keeps only its
``visual.*`` tensors; Hugging Face ``CLIPVisionModel`` names (ComfyUI) are mapped to official ones (formats.md §8.2).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping

import torch

from ..errors import ModelFormatError
from ..models.clip_vision import ClipVisionEncoder
from .files import open_tensors
from .files.boundary import boundary, shown

log = logging.getLogger(__name__)

OFFICIAL_PREFIX = "visual."
HF_PREFIX = "vision_model."  # transformers 4.x names; 5.x drops it
# Hugging Face CLIP vision names (prefix removed) -> official tower names, first match wins. q/k/v land on
# to_qkv.{q,k,v}.* and are then stacked along the rows in that order.
HF_TO_OFFICIAL = (
    (r"^embeddings\.patch_embedding\.", "patch_embedding."),
    (r"^embeddings\.class_embedding$", "cls_embedding"),
    (r"^embeddings\.position_embedding\.weight$", "pos_embedding"),
    (r"^pre_layrnorm\.", "pre_norm."),
    (r"^encoder\.layers\.(\d+)\.layer_norm([12])\.", r"transformer.\1.norm\2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.", r"transformer.\1.attn.to_qkv.\2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"transformer.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.", r"transformer.\1.mlp.0."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.", r"transformer.\1.mlp.2."),
    (r"^post_layernorm\.", "post_norm."),
)
_HF_RULES = tuple((re.compile(pattern), replacement) for pattern, replacement in HF_TO_OFFICIAL)
# Not part of the penultimate-block features: the projection head and a position-id buffer.
HF_IGNORED = re.compile(r"^(visual_projection\.weight|embeddings\.position_ids)$")
_QKV_PART = re.compile(r"^(transformer\.\d+\.attn\.to_qkv)\.([qkv])\.(weight|bias)$")
# Official [1, 1, D] / [1, T, D] parameters that Hugging Face stores as [D] / [T, D].
_BATCHED = ("cls_embedding", "pos_embedding")


def official_tower(tensors: Mapping[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Official visual-tower tensors (no ``visual.`` prefix) from an official CLIP or a HF CLIP vision file."""
    if any(key.startswith(OFFICIAL_PREFIX) for key in tensors):
        # the XLM-R text tower (textual.*) and log_scale are not needed for image features
        return {key[len(OFFICIAL_PREFIX):]: tensors[key] for key in tensors if key.startswith(OFFICIAL_PREFIX)}
    tower: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key in tensors:
        bare = key.removeprefix(HF_PREFIX)
        if HF_IGNORED.search(bare):
            continue
        name = next((rule.sub(replacement, bare) for rule, replacement in _HF_RULES if rule.search(bare)), bare)
        part = _QKV_PART.match(name)
        if part:
            qkv_parts.setdefault((part.group(1), part.group(3)), {})[part.group(2)] = tensors[key]
        elif name in _BATCHED:
            tensor = tensors[key]
            tower[name] = tensor.reshape(1, -1, tensor.shape[-1])
        else:
            tower[name] = tensors[key]
    for (layer, param), parts in qkv_parts.items():
        if set(parts) != {"q", "k", "v"}:
            raise ModelFormatError(f"{source}: {layer} ({param}) has only {sorted(parts)} of q_proj/k_proj/v_proj")
        tower[f"{layer}.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return tower


@boundary("CLIP vision tower")
def load_clip_vision(path: str | Path, *, dtype: torch.dtype = torch.float16,
                     device: torch.device | str = "cpu") -> ClipVisionEncoder:
    """Load the CLIP vision tower from the official ``.pth`` or a HF/ComfyUI ``.safetensors``.

    Args:
        path: ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` or ``clip_vision_h.safetensors``.
        dtype: weights and activations (official: fp16); LayerNorms run in fp32.
        device: where it runs.

    Returns:
        `ClipVisionEncoder`: ``encode(images [N, 3, H, W] in [-1, 1]) -> [N, 257, 1280]``.
    """
    path = Path(path)
    tensors = open_tensors(path, name=shown(path), what="CLIP vision file")
    model = ClipVisionEncoder.from_state_dict(official_tower(tensors, shown(path)), dtype=dtype, device=device,
                                              source=shown(path))
    config = model.config
    log.info("CLIP vision from %s: width %d, %d of %d blocks, %s on %s", path.name, config.dim,
             config.num_layers - 1, config.num_layers, str(dtype).removeprefix("torch."), device)
    return model
