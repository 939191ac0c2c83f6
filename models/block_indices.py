"""How many transformer blocks a state dict holds, read from its key names (``blocks.N.``) and bounded by what the
tensors can hold, so a header key such as ``blocks.1000000.x`` or thousands of near-empty block entries are refused
before any layer is allocated.

Entry point: `block_count(keys, source, prefix="blocks.")` -> L.
"""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import ModelFormatError

# Per-layer tensors that only some blocks carry (quantization scales, static activation scales, ComfyUI metadata).
_OPTIONAL_SUFFIXES = ("weight_scale", "scale_weight", "input_scale", "scale_input", "comfy_quant")


def block_count(keys: Iterable[str], source: str, prefix: str = "blocks.") -> int:
    """The number of blocks ``L``: indices must run 0 .. L-1 without gaps, and every block must hold at least half
    as many tensors as block 0 (scales aside), so ``L`` can never exceed what the file stores.

    Raises:
        ModelFormatError: naming ``source``, on an index beyond the tensor count, a gap, or an incomplete block.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}(\d{{1,9}})\.(.+)$")
    keys = list(keys)
    blocks: dict[int, set[str]] = {}
    for key in keys:
        match = pattern.match(key)
        if match is None:
            continue
        index = int(match.group(1))
        if index >= len(keys):
            raise ModelFormatError(f"{source}: block index {index} is beyond the {len(keys)} tensors the file holds; "
                                   "the file is corrupt")
        blocks.setdefault(index, set()).add(match.group(2))
    if not blocks:
        raise ModelFormatError(f"{source}: no {prefix}N. tensors: this is not a complete Wan DiT "
                               "(is it a LoRA, a VAE or a text encoder?)")
    if len(blocks) != max(blocks) + 1:
        missing = next(i for i in range(len(blocks) + 1) if i not in blocks)
        raise ModelFormatError(f"{source}: block indices are not contiguous from 0 ({prefix}{missing}. is missing)")
    required = len({name for name in blocks[0] if not name.endswith(_OPTIONAL_SUFFIXES)})
    for index, names in sorted(blocks.items()):
        if 2 * len(names) < required:  # a renamed key or two still reach the model's missing/unexpected report
            raise ModelFormatError(f"{source}: block {index} holds {len(names)} tensors where block 0 holds "
                                   f"{required}; the file is incomplete or corrupt")
    return len(blocks)
