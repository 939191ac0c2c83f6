"""LoRAs on a built Wan DiT: merged into the weights, or attached unmerged with live strengths (spec formats.md §9).

- `merge_loras(model, loras)`: float weights take ``W + Σ delta``; `QuantLinear` weights are dequantized, merged
  and re-quantized with fresh scales, so the low-precision GEMM path survives (mode (a), the default).
- `attach_loras(model, loras) -> LoraAttachment`: no linear weight changes; every linear a LoRA touches becomes a
  `LoraLinear` with side branches (mode (b)); biases, norms, modulation and conv deltas are written into their
  tensors and recomputed from the originals when a strength changes. `detach()` restores the model.
- `LoraSpec` / `loras_for_expert` / `load_loras`: LightX2V ``lora_configs`` entries and Wan2.2 per-expert routing.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import IncompatibleLoraError, InvalidInputError
from ..kernels.lora_linear import LoraBranch, LoraLinear, branch_dtype
from ..kernels.quantize import quantize_weight
from ..kernels.quantized import QuantLinear
from .lora_format import LoraFile, read_lora
from .lora_merge import AppliedLora, LoraPlan, merged_float

EXPERTS = ("high", "low")
# LightX2V's lora_configs "name" values -> expert role.
CONFIG_EXPERT_NAMES = {"high_noise_model": "high", "low_noise_model": "low"}
_FILE_EXPERT = re.compile(r"(?<![a-z])(high|low)[_-]?noise", re.IGNORECASE)

# Models that carry an attachment; a second one would fight over the originals of shared tensors.
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, LoraAttachment]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """A LoRA the user asked for.

    Attributes:
        path: the LoRA file.
        strength: multiplier of the delta (negative and > 1 allowed).
        alpha: overrides the file's alpha (scale = alpha / rank); None keeps the file's (or 1 without one).
        expert: ``"high"`` / ``"low"`` for one Wan2.2 A14B expert; None to route by the file name, else to both.
    """

    path: Path
    strength: float = 1.0
    alpha: float | None = None
    expert: str | None = None

    @classmethod
    def from_config(cls, entry: Mapping) -> "LoraSpec":
        """One LightX2V ``lora_configs`` entry: ``{path, strength=1.0, alpha=null, name}``."""
        if "path" not in entry:
            raise InvalidInputError(f"lora_configs entry {dict(entry)} has no 'path'")
        name = entry.get("name")
        if name is not None and name not in CONFIG_EXPERT_NAMES:
            raise InvalidInputError(f"lora_configs entry for {entry['path']}: name {name!r} is not one of "
                                    f"{', '.join(CONFIG_EXPERT_NAMES)}")
        alpha = entry.get("alpha")
        return cls(Path(entry["path"]), float(entry.get("strength", 1.0)), None if alpha is None else float(alpha),
                   CONFIG_EXPERT_NAMES.get(name))


def loras_for_expert(specs: Sequence[LoraSpec], role: str | None) -> list[LoraSpec]:
    """The LoRAs that apply to one model: every spec for a single model (``role`` None); for a Wan2.2 expert
    (``"high"``/``"low"``) the specs routed to it, by ``expert``, else by a ``high_noise``/``low_noise`` token in
    the file name, else (a Wan2.1 LoRA used on both experts) all of them."""
    if role is None:
        return list(specs)
    if role not in EXPERTS:
        raise InvalidInputError(f"expert role {role!r} is not one of {', '.join(EXPERTS)}")
    chosen = []
    for spec in specs:
        found = _FILE_EXPERT.search(spec.path.name)
        target = spec.expert or (found.group(1).lower() if found else None)
        if target in (None, role):
            chosen.append(spec)
    return chosen


def load_loras(specs: Sequence[LoraSpec]) -> list[AppliedLora]:
    """Read every LoRA once (a file listed twice is parsed once) and pair it with its strength and alpha."""
    files: dict[Path, LoraFile] = {}
    for spec in specs:
        if spec.path not in files:
            files[spec.path] = read_lora(spec.path)
    return [AppliedLora(files[spec.path], spec.strength, spec.alpha) for spec in specs]


def _model_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(param.shape) for key, param in model.named_parameters()}


def _check_unattached(model: nn.Module) -> None:
    if model in _ATTACHED:
        raise IncompatibleLoraError("this model already carries unmerged LoRAs; detach() them first, or pass every "
                                    "LoRA to one attach_loras/merge_loras call")


@torch.no_grad()
def merge_loras(model: nn.Module, loras: Sequence[AppliedLora]) -> None:
    """Merge the stack into the model's tensors in place (one rounding per tensor, deltas summed in order).

    Quantized layers keep their scheme: per-channel layers get fresh per-channel scales.
    """
    _check_unattached(model)
    plan = LoraPlan(loras, _model_shapes(model), source=type(model).__name__)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    for key in plan.keys():
        module = modules.get(key.removesuffix(".weight"))
        if key.endswith(".weight") and isinstance(module, QuantLinear):
            weight = module.dequantized_weight()
            codes, scale = quantize_weight(weight + plan.delta(key, weight.device), module.scheme)
            module.weight.copy_(codes)
            module.weight_scale.copy_(scale)
        else:
            params[key].copy_(merged_float(params[key], plan.delta(key, params[key].device)))


def _is_linear(module: nn.Module | None) -> bool:
    return isinstance(module, (nn.Linear, QuantLinear))


class LoraAttachment:
    """Unmerged LoRAs on a model; build with `attach_loras`.

    Linear weights get side branches; other tensors (biases, norms, modulation, patch embedding) hold
    ``original + Σ strength_i · delta_i``, recomputed in fp32 from the saved originals on every strength change.
    """

    def __init__(self, model: nn.Module, loras: Sequence[AppliedLora]):
        self.model = model
        self.plan = LoraPlan(loras, _model_shapes(model), source=type(model).__name__)
        self.strengths = [applied.strength for applied in loras]
        self._wrapped: dict[str, LoraLinear] = {}
        self._originals: dict[str, torch.Tensor] = {}
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
        for key in self.plan.keys():
            layer = key.removesuffix(".weight")
            if key.endswith(".weight") and _is_linear(modules.get(layer)):
                self._add_branches(key, modules[layer])
            else:
                self._originals[key] = params[key].detach().clone()
        self._params = {key: params[key] for key in self._originals}
        self._refresh(range(len(self.strengths)))

    def _add_branches(self, key: str, base: nn.Module) -> None:
        layer = key.removesuffix(".weight")
        wrapper = self._wrapped[layer] = LoraLinear(base)
        dtype, device = branch_dtype(base), base.weight.device
        for entry in self.plan.entries[key]:
            module = entry.module
            if entry.role == "pair":
                down, up = module.linear_factors()
                scale = module.scale(self.plan.loras[entry.index].alpha)
                branch = LoraBranch(down.to(device, dtype), up.to(device, dtype), scale, self.strengths, entry.index)
            else:
                branch = LoraBranch(None, module.diff.to(device, dtype), 1.0, self.strengths, entry.index)
            wrapper.branches.append(branch)
        parent, _, child = layer.rpartition(".")
        self.model.get_submodule(parent).register_module(child, wrapper)

    @torch.no_grad()
    def _refresh(self, indices) -> None:
        touched = {key for key, entries in self.plan.entries.items() if key in self._originals
                   for entry in entries if entry.index in indices}
        for key in touched:
            total = self._originals[key].float()
            for entry in self.plan.entries[key]:
                strength = self.strengths[entry.index]
                if strength:
                    total = total + self.plan.entry_delta(entry, strength, total.device)
            self._params[key].copy_(total.to(self._params[key].dtype))

    def set_strength(self, index: int, strength: float) -> None:
        """Change the strength of LoRA ``index`` (stack order); takes effect at the next forward."""
        self.strengths[index] = float(strength)
        self._refresh([index])

    @torch.no_grad()
    def detach(self) -> None:
        """Remove every branch and restore the original tensors."""
        for layer, wrapper in self._wrapped.items():
            parent, _, child = layer.rpartition(".")
            self.model.get_submodule(parent).register_module(child, wrapper.base)
        for key, original in self._originals.items():
            self._params[key].copy_(original)
        self._wrapped.clear()
        _ATTACHED.pop(self.model, None)


def attach_loras(model: nn.Module, loras: Sequence[AppliedLora]) -> LoraAttachment:
    """Attach the stack unmerged (side branches on linears); at most one attachment per model."""
    _check_unattached(model)
    attachment = LoraAttachment(model, loras)
    _ATTACHED[model] = attachment
    return attachment
