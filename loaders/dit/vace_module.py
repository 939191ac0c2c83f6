"""A VACE module file (only the ``vace_*`` tensors) attached to a Wan2.1 T2V base DiT of the same size.

Entry point: `attach_vace_module(base, path) -> DitSource`: the base's tensors plus the module's, official-named and
canonically quantized like any DiT file (prefix, diffusers names, scaled FP8 / INT8), with the VACE config
(``vace_layers`` from the ``vace_blocks`` count, `models.wan_config.default_vace_layers`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ...errors import ModelFormatError
from ...models.wan_config import WanConfig
from ..diffusers_keys import official_key
from ..files import TensorView, open_tensors
from ..quantization import SCALED_FP8_MARKER, canonicalize
from .layouts import find_prefix

# Any of these, whole or as a dotted suffix, marks the module's prefix (official then diffusers block names).
_ANCHORS = ("vace_patch_embedding.weight", "vace_blocks.0.self_attn.q.weight", "vace_blocks.0.attn1.to_q.weight")


def attach_vace_module(base, path: str | Path):
    """``base`` (a `DitSource` of a Wan2.1 T2V model) with the VACE tensors of the file at ``path``.

    Raises:
        ModelFormatError: ``base`` is not a T2V model (or already VACE), the file holds other tensors than
            ``vace_*`` ones or is incomplete, or its width / block layout is of another model size.
    """
    path = Path(path)
    name = str(path)
    config: WanConfig = base.config
    if config.model_type != "t2v" or config.is_vace or config.out_dim != 16:
        raise ModelFormatError(f"{name}: a VACE module attaches to a Wan2.1 T2V base model; {base.name} is a "
                               f"{'VACE' if config.is_vace else config.model_type} model")
    raw = open_tensors(path, name=name, what="VACE module file")
    keys = list(raw.keys())
    prefix = find_prefix(keys, _ANCHORS)
    if prefix is None:
        raise ModelFormatError(f"{name}: not a VACE module: no vace_patch_embedding or vace_blocks tensors found")
    diffusers = any(".attn1." in key for key in keys)

    def rename(key: str) -> str | None:
        if key == SCALED_FP8_MARKER:
            return key
        if not key.startswith(prefix):
            return None
        stripped = key[len(prefix):]
        if not stripped.startswith("vace_"):
            raise ModelFormatError(f"{name}: holds {key!r}, not only vace_* tensors; a full VACE model loads on its "
                                   "own, without a base model")
        return official_key(stripped, source=name) if diffusers else stripped

    module = canonicalize(raw, rename, metadata=raw.metadata, source=name)
    shapes = {**base.tensors.shapes(), **module.tensors.shapes()}
    try:
        merged = WanConfig.infer(shapes, source=name)
    except ModelFormatError as error:
        raise ModelFormatError(f"{error} (module attached to {base.name})") from None
    width = shapes["vace_patch_embedding.weight"][0]
    wrong = [key for key, shape in module.tensors.shapes().items()
             if key.startswith("vace_blocks.") and key.replace("vace_blocks.", "blocks.", 1) in shapes
             and shapes[key.replace("vace_blocks.", "blocks.", 1)] != shape]
    if width != config.dim or wrong or len(merged.vace_layers) > config.num_layers:
        raise ModelFormatError(f"{name}: this VACE module is for a model of width {width}, but the base model "
                               f"{base.name} has width {config.dim} ({config.num_layers} blocks); use the VACE module "
                               "of the same size (1.3B or 14B) as the T2V model")
    tensors = TensorView({**base.tensors.entries, **module.tensors.entries}, base.name, base.tensors.metadata)
    details = {**base.details, "vace_module": name, "vace_module_quantization": module.summary}
    return dataclasses.replace(base, tensors=tensors, layers={**base.layers, **module.layers},
                               config=dataclasses.replace(config, vace_layers=merged.vace_layers,
                                                          vace_in_dim=merged.vace_in_dim), details=details)
