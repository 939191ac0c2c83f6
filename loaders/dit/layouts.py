"""Key naming of a DiT file: which prefix it carries and whether it uses diffusers names (formats.md §7.1 step 1).

Entry point: `detect_key_layout(keys, source)` -> `KeyLayout` mapping every official name to the stored key; its
``rename`` is the DiT's `..quantization.Rename`.
Files that are another component (LoRA, VAE, text or CLIP encoder) are refused here with a message saying so.
"""

from __future__ import annotations

import dataclasses
from typing import Collection, Iterable

from ...errors import ModelFormatError
from ..diffusers_keys import official_key
from ..quantization import SCALED_FP8_MARKER, Rename, canonical_names
from .formats import ANCHOR_KEYS, DIFFUSERS_ANCHOR_KEYS, OTHER_COMPONENTS


@dataclasses.dataclass(frozen=True)
class KeyLayout:
    """How a file names its DiT tensors.

    Attributes:
        prefix: stripped from every key (``""``, ``"model.diffusion_model."``, ...).
        diffusers: keys use diffusers module names (mapped with `diffusers_keys`).
        rename: stored key -> official name; None for a key outside the prefix (the ``scaled_fp8`` marker keeps
            its own name).
        names: official name -> stored key, in file order.
        ignored: stored keys outside the prefix (other models packed in the same file), left unread.
    """

    prefix: str
    diffusers: bool
    rename: Rename
    names: dict[str, str]
    ignored: list[str]


def find_prefix(keys: Collection[str], anchors: Iterable[str]) -> str | None:
    """What precedes the first anchor found among ``keys`` (an anchor is a whole key or a dotted key suffix), or
    None when no anchor is there."""
    for anchor in anchors:
        for key in keys:
            if key == anchor or key.endswith("." + anchor):
                return key[:len(key) - len(anchor)]
    return None


def not_a_dit_error(keys: list[str], source: str) -> ModelFormatError:
    """The error for a file without DiT tensors: names the component it is when recognisable."""
    for pattern, what, remedy in OTHER_COMPONENTS:
        hit = next((key for key in keys if pattern.search(key)), None)
        if hit is not None:
            return ModelFormatError(f"{source}: this is {what} (key {hit!r}), not a Wan DiT; {remedy}")
    shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
    return ModelFormatError(f"{source}: not a Wan DiT: none of {', '.join(ANCHOR_KEYS)} found "
                            f"(keys: {shown or 'none'})")


def detect_key_layout(keys: Iterable[str], source: str) -> KeyLayout:
    """Find the prefix and naming of a DiT's keys and map them to official names.

    Raises:
        ModelFormatError: the keys are not a Wan DiT (the message says what they are, when known), or two stored
            keys map to the same official name.
    """
    keys = list(keys)
    prefix, diffusers = find_prefix(keys, ANCHOR_KEYS), False
    if prefix is None:
        prefix, diffusers = find_prefix(keys, DIFFUSERS_ANCHOR_KEYS), True
    if prefix is None:
        raise not_a_dit_error(keys, source)

    def rename(key: str) -> str | None:
        if key == SCALED_FP8_MARKER:  # top level whatever the prefix; read by the quantization step
            return key
        if not key.startswith(prefix):
            return None
        name = key[len(prefix):]
        return official_key(name, source=source) if diffusers else name

    names = canonical_names(keys, rename, source)
    kept = set(names.values())
    ignored = [key for key in keys if key not in kept]
    return KeyLayout(prefix=prefix, diffusers=diffusers, rename=rename, names=names, ignored=ignored)
