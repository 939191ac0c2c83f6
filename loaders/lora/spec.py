"""The LoRAs a user asked for, and which Wan2.2 A14B expert takes each (spec formats.md §9).

`LoraSpec` is one request (a LightX2V config's ``lora_configs`` become `LoraSpec`s in `..dit.lightx2v_config`, the
DiT loader node and ``convert --lora`` build them too). `expert_of` / `route_loras` route a stack to the experts by
the spec's ``expert``, else by `expert_names.expert_in_name` on the file name, else to both; `load_loras` reads
each file once and pairs it with its strength and alpha for `merge` / `attach`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

from ...expert_names import BOTH, EXPERTS, expert_in_name
from .format import LoraFile, read_lora
from .merge import AppliedLora

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """A LoRA the user asked for.

    Attributes:
        path: the LoRA file.
        strength: multiplier of the delta (negative and > 1 allowed).
        alpha: overrides the file's alpha (scale = alpha / rank); None keeps the file's (or 1 without one).
        expert: ``"high"`` / ``"low"`` for one Wan2.2 A14B expert, ``"both"`` for both whatever the file name says;
            None to route by the file name, else to both.
    """

    path: Path
    strength: float = 1.0
    alpha: float | None = None
    expert: str | None = None


def expert_of(spec: LoraSpec) -> tuple[str | None, str]:
    """(``"high"`` / ``"low"`` / None for both Wan2.2 experts, why): the spec's ``expert``, else what the file name
    says (`expert_in_name`: ``high_noise`` / ``low_noise`` first, else a standalone ``high`` / ``low``), else both."""
    if spec.expert == BOTH:
        return None, "chosen"
    if spec.expert is not None:
        return spec.expert, "chosen"
    return expert_in_name(spec.path.name)


def route_loras(specs: Sequence[LoraSpec]) -> dict[str, list[LoraSpec]]:
    """The LoRAs of each Wan2.2 A14B expert, in stack order: ``{"high": [...], "low": [...]}``, routed by
    `expert_of` (a LoRA for no particular expert, e.g. a Wan2.1 one, goes to both). Logs one line per LoRA."""
    routed: dict[str, list[LoraSpec]] = {role: [] for role in EXPERTS}
    for spec in specs:
        role, reason = expert_of(spec)
        for expert in EXPERTS if role is None else (role,):
            routed[expert].append(spec)
        log.info("LoRA %s -> %s (%s)", spec.path.name,
                 "both experts" if role is None else f"{role}-noise expert", reason)
    return routed


def load_loras(specs: Sequence[LoraSpec]) -> list[AppliedLora]:
    """Read every LoRA once (a file listed twice is parsed once) and pair it with its strength and alpha."""
    files: dict[Path, LoraFile] = {}
    for spec in specs:
        if spec.path not in files:
            files[spec.path] = read_lora(spec.path)
    return [AppliedLora(files[spec.path], spec.strength, spec.alpha) for spec in specs]
