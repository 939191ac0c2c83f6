"""LoRAs on a built Wan DiT: merged into the weights, or attached unmerged with live strengths (spec formats.md §9).

- `merge_loras(model, loras)`: float weights take ``W + Σ delta``; `QuantLinear` weights are dequantized, merged
  and re-quantized with fresh scales, so the low-precision GEMM path survives (mode (a), the default).
- `attach_loras(model, loras) -> LoraAttachment`: no linear weight changes; every linear a LoRA touches becomes a
  `LoraLinear` with side branches (mode (b)); biases, norms, modulation and conv deltas are written into their
  tensors and recomputed from the originals when a strength changes. `detach()` restores the model.

The stacks come from `spec.load_loras`; merging before the model is built (at load, or for an export) is
`merge.MergedTensors`.
"""

from __future__ import annotations

import re
import weakref
from typing import Callable, Sequence

import torch
from torch import nn

from ...errors import IncompatibleLoraError
from ...kernels.quantized import QuantLinear
from .linear import LoraBranch, LoraLinear, branch_dtype
from .merge import AppliedLora, LoraPlan, merged_float, merged_quantized

# A linear inside a DiT block: (the block, the linear's name within it), as `WanBlock.float_inputs` takes it.
_BLOCK_LAYER = re.compile(r"(blocks\.\d+)\.(.+)")

# Models that carry an attachment; a second one would fight over the originals of shared tensors.
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, LoraAttachment]" = weakref.WeakKeyDictionary()


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


class LoraAttachment:
    """Unmerged LoRAs on a model; build with `attach_loras`.

    Linear weights get side branches; other tensors (biases, norms, modulation, patch embedding) hold
    ``original + Σ strength_i · delta_i``, recomputed in fp32 from the saved originals on every strength change.
    A block whose ops would hand a branched linear a fused-quantized input is asked for the float activation
    instead (`WanBlock.float_inputs`): the quantized base linear then quantizes the float input itself (the codes
    the fused kernel would have written, one extra pass over the activation) and the branch ``x @ downᵀ @ upᵀ``
    reads the exact input instead of its 8-bit rounding. `detach()` undoes it.
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
        self._restores: list[Callable[[], None]] = []
        self._feed_float_inputs()
        self._refresh(range(len(self.strengths)))

    def _feed_float_inputs(self) -> None:
        branched: dict[str, set[str]] = {}  # block -> its branched linears, block-relative
        for layer in self._wrapped:
            if found := _BLOCK_LAYER.fullmatch(layer):
                branched.setdefault(found.group(1), set()).add(found.group(2))
        for block, layers in branched.items():
            self._restores.append(self.model.get_submodule(block).float_inputs(layers))

    def _add_branches(self, key: str, base: nn.Module) -> None:
        layer = key.removesuffix(".weight")
        wrapper = self._wrapped[layer] = LoraLinear(base)
        dtype, device = branch_dtype(base), base.weight.device
        for entry in self.plan.entries[key]:
            module = entry.module
            if entry.role == "pair":
                down, up = module.linear_factors()
                scale = module.scale(self.plan.loras[entry.index].alpha)
                branch = LoraBranch(down.to(device, dtype), up.to(device, dtype), scale, self.strengths[entry.index],
                                    entry.index)
            else:
                branch = LoraBranch(None, module.diff.to(device, dtype), 1.0, self.strengths[entry.index], entry.index)
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
        for wrapper in self._wrapped.values():
            for branch in wrapper.branches:
                if branch.index == index:
                    branch.set_strength(self.strengths[index])
        self._refresh([index])

    @torch.no_grad()
    def detach(self) -> None:
        """Remove every branch and restore the original tensors."""
        for layer, wrapper in self._wrapped.items():
            parent, _, child = layer.rpartition(".")
            self.model.get_submodule(parent).register_module(child, wrapper.base)
        for key, original in self._originals.items():
            self._params[key].copy_(original)
        for restore in reversed(self._restores):
            restore()
        self._restores.clear()
        self._wrapped.clear()
        _ATTACHED.pop(self.model, None)


def attach_loras(model: nn.Module, loras: Sequence[AppliedLora]) -> LoraAttachment:
    """Attach the stack unmerged (side branches on linears); at most one attachment per model."""
    _check_unattached(model)
    attachment = LoraAttachment(model, loras)
    _ATTACHED[model] = attachment
    return attachment
