"""The Wan2.2 A14B experts by name, and the one rule by which a file or folder name says which expert it holds.

`EXPERTS` is the run order (the high-noise expert takes the first steps), so an expert's position in it is its index
in a model pair (`sampling.experts`). `expert_in_name` reads a DiT's role (`loaders.dit.folders`, formats.md §4.7)
and routes a LoRA (`loaders.lora.spec`) by the same tokens. The module imports nothing of the pack, so loaders,
sampling and nodes all read it without an upward import.
"""

from __future__ import annotations

import re

HIGH, LOW = EXPERTS = ("high", "low")
# A LoRA routed to both experts whatever its file name says.
BOTH = "both"
# The official A14B subfolder of each expert; LightX2V's ``lora_configs`` name an expert by it too.
FOLDERS = {HIGH: "high_noise_model", LOW: "low_noise_model"}

# Tokens that say an expert, most specific first: ``high_noise`` / ``low-noise`` / ``HighNoise`` (the released DiT
# and LoRA names), then a standalone ``high`` / ``low`` (``..._HIGH_fp16`` LoRAs, ``...-A14B-LOW_fp8...`` DiTs).
# A token stands between non-alphanumerics, so ``highres`` or ``lowrank`` say nothing.
_TOKENS = (
    re.compile(r"(?<![a-z0-9])(high|low)[_-]?noise(?![a-z0-9])", re.IGNORECASE),
    re.compile(r"(?<![a-z0-9])(high|low)(?![a-z0-9])", re.IGNORECASE),
)


def expert_in_name(name: str) -> tuple[str | None, str]:
    """(``"high"`` / ``"low"`` / None, why) for one file or folder name: the expert that the most specific kind of
    token names; None when no token names one, or when the tokens of that kind name both."""
    for pattern in _TOKENS:
        found = {match.group(1).lower() for match in pattern.finditer(name)}
        if len(found) == 1:
            return found.pop(), f"file name token {pattern.search(name).group(0)!r}"
        if found:
            return None, "the file name names both experts"
    return None, "no high/low token in the file name"
