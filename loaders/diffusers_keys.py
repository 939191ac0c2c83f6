"""diffusers ``WanTransformer3DModel`` / ``WanVACETransformer3DModel`` key names -> official Wan names (spec formats.md §6.1), as tables.

Keys are mapped by structure (module path, then parameter name), never by substring replacement, so
``attn2.add_k_proj`` cannot be mistaken for ``attn2.to_k`` and the norm2/norm3 swap needs no placeholder.
Entry point: `official_key(key)`.
"""

from __future__ import annotations

import re

from ..errors import ModelFormatError

# Top-level diffusers module -> official module (parameters such as .weight/.bias/.weight_scale follow unchanged).
TOP_MODULES = {
    "patch_embedding": "patch_embedding",
    "vace_patch_embedding": "vace_patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
}

# Top-level parameters that are not inside a module.
TOP_PARAMETERS = {
    "scale_shift_table": "head.modulation",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
}

# Module inside ``blocks.N.`` -> official module inside ``blocks.N.``.
BLOCK_MODULES = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",  # diffusers' norm2 is the affine cross-attention pre-norm, official norm3
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}

BLOCK_PARAMETERS = {"scale_shift_table": "modulation"}

# ``WanVACETransformer3DModel``: a ``vace_blocks.N.`` block is a base block plus these projections.
VACE_BLOCK_MODULES = {**BLOCK_MODULES, "proj_in": "before_proj", "proj_out": "after_proj"}

_BLOCK = re.compile(r"^(blocks|vace_blocks)\.(\d+)\.(.+)$")


def official_key(key: str, *, source: str) -> str:
    """The official name of a diffusers key (prefix already stripped).

    Raises:
        ModelFormatError: the key is not part of the Wan transformer.
    """
    if block := _BLOCK.match(key):
        kind, index, rest = block.groups()
        mapped = _map(rest, BLOCK_MODULES if kind == "blocks" else VACE_BLOCK_MODULES, BLOCK_PARAMETERS)
        if mapped is not None:
            return f"{kind}.{index}.{mapped}"
    else:
        mapped = _map(key, TOP_MODULES, TOP_PARAMETERS)
        if mapped is not None:
            return mapped
    raise ModelFormatError(f"{source}: diffusers key {key!r} has no official Wan counterpart (Animate and "
                           "other transformer classes are not supported)")


def _map(key: str, modules: dict[str, str], parameters: dict[str, str]) -> str | None:
    if key in parameters:
        return parameters[key]
    module, _, parameter = key.rpartition(".")
    return f"{modules[module]}.{parameter}" if module in modules else None
