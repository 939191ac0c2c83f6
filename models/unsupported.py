"""Wan variants that are recognised but cannot run yet (Animate), and the one check that refuses them.

The DiT loader runs it on a file's official-named keys and its ``config.json`` before anything else is read (the
inspector reports the variant from the error); `WanConfig` runs it too, so that a state dict or a config handed
to the models directly is refused the same way.
"""

from __future__ import annotations

from typing import Any, Container, Mapping

from ..errors import UnsupportedVariantError

ANIMATE = ("animate", "Wan2.2 Animate-14B")

# Official key that only the variant has -> (variant, plain name).
UNSUPPORTED_KEYS = {
    "pose_patch_embedding.weight": ANIMATE,
}
# config.json ``_class_name`` -> (variant, plain name).
UNSUPPORTED_CLASSES = {
    "WanAnimateModel": ANIMATE,
}
# config.json field that only the variant has -> (variant, plain name).
UNSUPPORTED_CONFIG_FIELDS: dict[str, tuple[str, str]] = {}


def refuse_unsupported(keys: Container[str], config_json: Mapping[str, Any] | None, source: str) -> None:
    """Raise `UnsupportedVariantError` naming the variant when official ``keys`` or ``config_json`` reveal one."""
    config_json = config_json or {}
    found = ([model for key, model in UNSUPPORTED_KEYS.items() if key in keys]
             + [model for name, model in UNSUPPORTED_CLASSES.items() if config_json.get("_class_name") == name]
             + [model for field, model in UNSUPPORTED_CONFIG_FIELDS.items() if field in config_json])
    if found:
        variant, model = found[0]
        raise UnsupportedVariantError(f"{source}: this is a {model} checkpoint ({variant}), which Wan Express does "
                                      "not support yet", variant, model)
