"""Independent reference networks for parity tests.

The official Wan modules come from the PyPI wheel ``wan22==2.2.11`` (installed with ``--no-deps``); only
``wan/modules/*`` is used, imported through a stand-in package so the wheel's pipelines (and their many
dependencies) never load. Its CUDA-only flash attention is replaced by an SDPA shim. The Wan2.1 CLIP branch is
not in that wheel: diffusers' ``WanTransformer3DModel`` is the reference there, fed through an explicit key table.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from wan_express.synthetic import random_weights_

_STANDIN = "_wan_official_modules"


def official_module(name: str) -> types.ModuleType:
    """Import ``wan/modules/<name>.py`` from the installed wan22 wheel without running ``wan/__init__``."""
    if _STANDIN not in sys.modules:
        spec = importlib.util.find_spec("wan")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the reference package is missing: pip install --no-deps wan22==2.2.11")
        package = types.ModuleType(_STANDIN)
        package.__path__ = [str(Path(next(iter(spec.submodule_search_locations))) / "modules")]
        sys.modules[_STANDIN] = package
    module = importlib.import_module(f"{_STANDIN}.{name}")
    if hasattr(module, "flash_attention"):
        module.flash_attention = sdpa_attention
    return module


def sdpa_attention(q, k, v, q_lens=None, k_lens=None, **_unused):
    """Stand-in for the official flash_attention: [B, L, N, d] tensors, keys beyond k_lens masked per sample."""
    mask = None
    if k_lens is not None:
        positions = torch.arange(k.shape[1], device=k.device)
        mask = (positions[None, :] < k_lens.to(k.device)[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).to(q.dtype)


def official_wan_model(config, seed: int = 0) -> torch.nn.Module:
    """The official Wan2.2 ``WanModel`` (no CLIP branch) for a `WanConfig`, with random weights, fp32."""
    model_module = official_module("model")
    model = model_module.WanModel(
        model_type=config.model_type,
        in_dim=config.in_dim, dim=config.dim, ffn_dim=config.ffn_dim, freq_dim=config.freq_dim,
        text_dim=config.text_dim, out_dim=config.out_dim, num_heads=config.num_heads,
        num_layers=config.num_layers, eps=config.eps)
    random_weights_(model, seed)
    return model.eval()


def official_to_diffusers(key: str) -> str:
    """Official key -> diffusers key (spec formats.md §6.1), written out rule by rule."""
    top = {
        "time_embedding.0.": "condition_embedder.time_embedder.linear_1.",
        "time_embedding.2.": "condition_embedder.time_embedder.linear_2.",
        "time_projection.1.": "condition_embedder.time_proj.",
        "text_embedding.0.": "condition_embedder.text_embedder.linear_1.",
        "text_embedding.2.": "condition_embedder.text_embedder.linear_2.",
        "img_emb.proj.0.": "condition_embedder.image_embedder.norm1.",
        "img_emb.proj.1.": "condition_embedder.image_embedder.ff.net.0.proj.",
        "img_emb.proj.3.": "condition_embedder.image_embedder.ff.net.2.",
        "img_emb.proj.4.": "condition_embedder.image_embedder.norm2.",
        "head.head.": "proj_out.",
    }
    exact = {"img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed", "head.modulation": "scale_shift_table"}
    if key in exact:
        return exact[key]
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old):]
    if not key.startswith("blocks."):
        return key
    _, index, rest = key.split(".", 2)
    block = {
        "modulation": "scale_shift_table",
        "norm3.weight": "norm2.weight", "norm3.bias": "norm2.bias",
        "ffn.0.weight": "ffn.net.0.proj.weight", "ffn.0.bias": "ffn.net.0.proj.bias",
        "ffn.2.weight": "ffn.net.2.weight", "ffn.2.bias": "ffn.net.2.bias",
    }
    if rest in block:
        return f"blocks.{index}.{block[rest]}"
    attn, proj, param = rest.split(".")
    attn = {"self_attn": "attn1", "cross_attn": "attn2"}[attn]
    proj = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "k_img": "add_k_proj", "v_img": "add_v_proj",
            "norm_q": "norm_q", "norm_k": "norm_k", "norm_k_img": "norm_added_k"}[proj]
    return f"blocks.{index}.{attn}.{proj}.{param}"


def diffusers_wan_model(official_state_dict: dict, config) -> torch.nn.Module:
    """diffusers' ``WanTransformer3DModel`` loaded strictly with official weights (Wan2.1 CLIP-branch models)."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(
        num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
        in_channels=config.in_dim, out_channels=config.out_dim, text_dim=config.text_dim,
        freq_dim=config.freq_dim, ffn_dim=config.ffn_dim, num_layers=config.num_layers, eps=config.eps,
        image_dim=config.clip_dim if config.clip_branch else None,
        added_kv_proj_dim=config.dim if config.clip_branch else None,
        pos_embed_seq_len=config.image_tokens if config.model_type == "flf2v" else None)
    converted = {official_to_diffusers(k): v for k, v in official_state_dict.items()}
    model.load_state_dict(converted, strict=True)
    return model.eval()
