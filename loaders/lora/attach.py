"""LoRAs on a built Wan DiT: merged into the weights, or attached unmerged with live strengths (spec formats.md §9).

- `merge_loras(model, loras)`: float weights take ``W + Σ delta``; `QuantLinear` weights are dequantized, merged
  and re-quantized with fresh scales, so the low-precision GEMM path survives (mode (a), the default).
- `attach_loras(model, loras) -> LoraAttachment`: no linear weight changes; every linear a LoRA touches becomes a
  `LoraLinear` with side branches (mode (b)); biases, norms, modulation and conv deltas are written into their
  tensors and recomputed from the originals when a strength changes. `detach()` restores the model.
- `LoraSpec` / `route_loras` / `load_loras`: the LoRAs asked for (a LightX2V config's ``lora_configs`` become
  `LoraSpec`s in `lightx2v_config`) and Wan2.2 per-expert routing.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import weakref
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ...errors import IncompatibleLoraError
from ...kernels.ops import TorchOps
from ...kernels.quantized import QuantLinear
from .format import LoraFile, read_lora
from .linear import LoraBranch, LoraLinear, branch_dtype
from .merge import AppliedLora, LoraPlan, merged_float, merged_quantized

EXPERTS = ("high", "low")
# File-name tokens that route a LoRA to one expert, most specific first: "high_noise" / "low-noise" / "highnoise",
# then a standalone "high" / "low" between non-alphanumerics ("..._HIGH_fp16" but not "highres" or "lowrank").
_FILE_EXPERT_TOKENS = (
    re.compile(r"(?<![a-z0-9])(high|low)[_-]?noise(?![a-z0-9])", re.IGNORECASE),
    re.compile(r"(?<![a-z0-9])(high|low)(?![a-z0-9])", re.IGNORECASE),
)

# Block layers whose input a fused kernel may quantize before the layer sees it (QuantOps on CUDA + Triton), and
# what produces that input: ("op", name the block passes to ops.norm_modulate / ops.layer_norm) or
# ("module", block-relative path of the fused GELU). A side branch on such a layer needs the float input instead.
FUSED_PRODUCERS = {
    "self_attn.q": ("op", "self_attn.q"), "self_attn.k": ("op", "self_attn.q"), "self_attn.v": ("op", "self_attn.q"),
    "cross_attn.q": ("op", "cross_attn.q"), "ffn.0": ("op", "ffn.0"), "ffn.2": ("module", "ffn.1"),
}
_BLOCK_LAYER = re.compile(r"(blocks\.\d+)\.(.+)")

# Models that carry an attachment; a second one would fight over the originals of shared tensors.
log = logging.getLogger(__name__)

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


def expert_of(spec: LoraSpec) -> tuple[str | None, str]:
    """(``"high"`` / ``"low"`` / None for both Wan2.2 experts, why): the spec's ``expert``, else a token of the file
    name (``high_noise`` / ``low_noise`` first, else a standalone ``high`` / ``low``), else both."""
    if spec.expert == "both":
        return None, "chosen"
    if spec.expert is not None:
        return spec.expert, "chosen"
    for pattern in _FILE_EXPERT_TOKENS:
        found = {match.group(1).lower() for match in pattern.finditer(spec.path.name)}
        if len(found) == 1:
            token = pattern.search(spec.path.name).group(0)
            return found.pop(), f"file name token {token!r}"
        if found:
            return None, "the file name names both experts"
    return None, "no high/low token in the file name"


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
            codes, scale = merged_quantized(module.weight, module.weight_scale, module.scheme,
                                            plan.delta(key, module.weight.device))
            module.weight.copy_(codes)
            module.weight_scale.copy_(scale)
        else:
            params[key].copy_(merged_float(params[key], plan.delta(key, params[key].device)))


def _is_linear(module: nn.Module | None) -> bool:
    return isinstance(module, (nn.Linear, QuantLinear))


class FloatInputOps:
    """A block's operations, except that the LayerNorm ops named in ``names`` return their float output.

    Used for the layers that carry side branches: the quantized base linear then quantizes the float input itself
    (the same per-token codes the fused kernel would have written, one extra pass over the activation), and the
    branch ``x @ downᵀ @ upᵀ`` reads the exact input instead of its 8-bit rounding.
    """

    def __init__(self, ops: TorchOps, names: set[str]):
        self.ops, self.names = ops, names

    def __getattr__(self, attribute: str):
        if attribute == "ops":  # not set yet (copying); never recurse
            raise AttributeError(attribute)
        return getattr(self.ops, attribute)

    def norm_modulate(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, *, name: str):
        if name in self.names:
            return TorchOps.norm_modulate(self.ops, x, shift, scale, eps, name=name)
        return self.ops.norm_modulate(x, shift, scale, eps, name=name)

    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, *, name: str):
        if name in self.names:
            return TorchOps.layer_norm(self.ops, x, weight, bias, eps, name=name)
        return self.ops.layer_norm(x, weight, bias, eps, name=name)


class LoraAttachment:
    """Unmerged LoRAs on a model; build with `attach_loras`.

    Linear weights get side branches; other tensors (biases, norms, modulation, patch embedding) hold
    ``original + Σ strength_i · delta_i``, recomputed in fp32 from the saved originals on every strength change.
    Ops that would hand a branched layer a fused-quantized input hand it the float activation instead
    (`FloatInputOps`, and a plain GELU before ``ffn.2``); `detach()` puts them back.
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
        self._replaced: list[tuple[nn.Module, str, object]] = []  # (owner, attribute, original) to restore
        self._feed_float_inputs()
        self._refresh(range(len(self.strengths)))

    def _feed_float_inputs(self) -> None:
        op_names: dict[str, set[str]] = {}
        for layer in self._wrapped:
            found = _BLOCK_LAYER.fullmatch(layer)
            producer = FUSED_PRODUCERS.get(found.group(2)) if found else None
            if producer is None:
                continue
            block, (kind, name) = found.group(1), producer
            if kind == "op":
                op_names.setdefault(block, set()).add(f"{block}.{name}")
            else:
                parent, _, child = f"{block}.{name}".rpartition(".")
                owner = self.model.get_submodule(parent)
                self._replaced.append((owner, child, owner.get_submodule(child)))
                owner.register_module(child, TorchOps().gelu_tanh(name=layer))
        for block, names in op_names.items():
            owner = self.model.get_submodule(block)
            self._replaced.append((owner, "ops", owner.ops))
            owner.ops = FloatInputOps(owner.ops, names)

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
        for owner, attribute, original in reversed(self._replaced):
            if isinstance(original, nn.Module):
                owner.register_module(attribute, original)
            else:
                setattr(owner, attribute, original)
        self._replaced.clear()
        self._wrapped.clear()
        _ATTACHED.pop(self.model, None)


def attach_loras(model: nn.Module, loras: Sequence[AppliedLora]) -> LoraAttachment:
    """Attach the stack unmerged (side branches on linears); at most one attachment per model."""
    _check_unattached(model)
    attachment = LoraAttachment(model, loras)
    _ATTACHED[model] = attachment
    return attachment
