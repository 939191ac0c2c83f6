"""What a DiT file written by Wan Express (`export.writer.write_dit`, ``convert``) records about itself.

The writer stores these fields under `METADATA_PREFIX` in the safetensors metadata; the DiT opener and ``inspect``
read them back with `read_export_metadata`.
"""

from __future__ import annotations

import json
from typing import Mapping

from ...errors import ModelFormatError

METADATA_PREFIX = "wan_express."


# Metadata fields write_dit's callers record (convert: source, loras, scheme) plus the layout it adds; "loras" is JSON.
EXPORT_FIELDS = ("source", "loras", "scheme", "layout")


def read_export_metadata(metadata: Mapping[str, str], name: str) -> dict[str, object] | None:
    """What a file written by `write_dit` says about itself: ``{source, loras, scheme, layout}`` (``loras`` decoded:
    ``[{file, strength, alpha}]``), or None for a file Wan Express did not write."""
    fields = {field: metadata[METADATA_PREFIX + field] for field in EXPORT_FIELDS if METADATA_PREFIX + field in metadata}
    if not fields:
        return None
    if "loras" in fields:
        try:
            fields["loras"] = json.loads(fields["loras"])
        except json.JSONDecodeError as error:
            raise ModelFormatError(f"{name}: metadata {METADATA_PREFIX}loras is not valid JSON ({error}); the file "
                                   "was edited or truncated, export it again") from None
    return fields
