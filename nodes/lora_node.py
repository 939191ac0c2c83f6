"""Node: a LoRA on core Wan MODELs (``MODEL -> MODEL``, stackable), routed to the Wan2.2 expert it is for.

The file is read by the pack's own LoRA reader (every key style: LightX2V ``diffusion_model.*`` with ``diff`` /
``diff_b`` / ``diff_m``, kohya ``lora_unet_*``, diffusers, PEFT), checked against the model's shapes, and put on a
clone of the model, so the cached model is never modified:
- ``merge``: core-named patches, merged into the weights when the model loads (FP8 / INT8 codes re-quantized by our
  linears) and undone when another clone runs;
- ``live``: each low-rank pair runs beside its linear (``x·downᵀ·upᵀ·scale·strength``, an object patch of the
  linear's forward), so quantized codes stay exactly as stored, at a small cost per step; full diffs still merge.
Modulation deltas (``diff_m``), which core's patcher never applies to these non-leaf parameters, become object
patches of the parameter. Values a patch starts from are read through the clone (``get_model_object``): the shared
network may hold another clone's patches at that moment.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..errors import IncompatibleLoraError
from ..expert_names import BOTH, EXPERTS, HIGH, LOW
from ..kernels.quantized import QuantizedActivation
from ..loaders.lora import AppliedLora, LoraPlan, LoraSpec, expert_of, read_lora
from . import host

log = logging.getLogger(__name__)

EXPERT_CHOICES = ("auto", *EXPERTS, BOTH)
MODES = ("merge", "live")
PREFIX = "diffusion_model."


class WanExpressLoRA:
    """Applies a LoRA to a Wan MODEL (or to the expert of a Wan2.2 pair it is for)."""

    CATEGORY = "Wan Express/loaders"
    DESCRIPTION = ("Apply a LoRA to Wan models: from the Wan Express DiT loader or core's loader, FP8 / INT8 "
                   "included (merged and re-quantized when the model loads, undone for other branches of the "
                   "graph). Chain several. For a Wan2.2 A14B pair connect both experts: the LoRA goes to the one "
                   "its file name names (high_noise / low_noise), or as 'expert' says.")
    RETURN_TYPES = ("MODEL", "MODEL", "STRING")
    RETURN_NAMES = ("model", "model_low", "report")
    OUTPUT_TOOLTIPS = ("The model (high-noise expert of a pair) with the LoRA.", "The low-noise expert with the "
                       "LoRA when it is its target (passed through otherwise; empty without model_low).",
                       "What was applied where, and any LoRA keys that match nothing in the model.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The Wan model; for a Wan2.2 A14B pair the high-noise expert."}),
                "lora": (host.list_files("loras"), {"tooltip": "A LoRA from models/loras/."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                       "tooltip": "Multiplier of the LoRA's change (0 turns it off)."}),
                "expert": (list(EXPERT_CHOICES), {"default": "auto", "tooltip": "Wan2.2 pair: which expert takes "
                           "it. auto follows the file name (high_noise / low_noise, or a standalone high / low), "
                           "else both. A single model takes every LoRA."}),
            },
            "optional": {
                "model_low": ("MODEL", {"tooltip": "Wan2.2 A14B: the low-noise expert."}),
                "alpha": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 1.0,
                                    "tooltip": "Overrides the file's alpha (scale = alpha / rank); 0 keeps the "
                                               "file's (or 1 without one)."}),
                "mode": (list(MODES), {"default": "merge", "tooltip": "merge: into the weights when the model "
                         "loads (no cost per step; FP8/INT8 weights are re-quantized). live: beside the weights "
                         "(FP8/INT8 codes untouched, a little slower per step)."}),
            },
        }

    def apply(self, model, lora: str, strength: float, expert: str, model_low=None, alpha: float = 0.0,
              mode: str = "merge"):
        path = host.resolve_file("loras", lora)
        spec = LoraSpec(path, strength, alpha or None, None if expert == "auto" else expert)
        targets = {HIGH: model} if model_low is None else {HIGH: model, LOW: model_low}
        if model_low is None:
            chosen, why = [HIGH], "a single model takes every LoRA"
        else:
            role, why = expert_of(spec)
            chosen = list(EXPERTS) if role is None else [role]
        lines, patched = [], dict(targets)
        for role in chosen:
            patched[role], line = apply_lora(targets[role], spec, live=mode == "live")
            lines.append(line if model_low is None else f"{role}-noise expert: {line}")
        report = f"{path.name} ({why}): " + "; ".join(lines)
        log.info("LoRA %s", report)
        return {"ui": {"text": [report]}, "result": (patched[HIGH], patched.get(LOW), report)}


def apply_lora(model, spec: LoraSpec, live: bool = False):
    """A clone of core MODEL ``model`` carrying ``spec``'s LoRA (core patches, or ``live`` side branches for its
    low-rank pairs); (clone, one-line report)."""
    import comfy.lora

    network = model.model.diffusion_model
    shapes = {key: tuple(tensor.shape) for key, tensor in network.state_dict().items()}
    lora_file = read_lora(spec.path)
    plan = LoraPlan([AppliedLora(lora_file, spec.strength, spec.alpha)], shapes, source="the connected model")
    core_named, modulation, branches = _core_state_dict(plan, spec, live)
    clone = model.clone()
    for name, (down, up, factor) in branches.items():
        key = f"{PREFIX}{name}.forward"
        current = clone.object_patches.get(key)
        stack = current.branches if isinstance(current, _SideBranches) else ()
        clone.add_object_patch(key, _SideBranches(network.get_submodule(name), (*stack, (down, up, factor))))
    _feed_float_inputs(clone, network, branches)
    patches = comfy.lora.load_lora(core_named, comfy.lora.model_lora_keys_unet(clone.model, {}), log_missing=False)
    added = clone.add_patches(patches, spec.strength)
    for key, delta in modulation.items():
        name = PREFIX + key
        current = clone.get_model_object(name)  # the clone's own value, never another clone's patch in place now
        clone.add_object_patch(name, torch.nn.Parameter(current.detach() + delta.to(current), requires_grad=False))
    missed = sorted({key.removeprefix(PREFIX) for key in patches} - {key.removeprefix(PREFIX) for key in added})
    unmatched = [*plan.skipped, *missed]
    if not added and not modulation and not branches:
        raise IncompatibleLoraError(f"LoRA {spec.path.name} changes nothing in this model")
    line = (f"{len(added)} tensors patched" + (f", {len(branches)} live side branches" if branches else "")
            + (f", {len(modulation)} modulation deltas" if modulation else ""))
    if unmatched:
        line += f"; {len(unmatched)} keys match nothing and were skipped (e.g. {', '.join(unmatched[:3])})"
    return clone, line


def _core_state_dict(plan: LoraPlan, spec: LoraSpec, live: bool):
    """The plan's entries under the names core's LoRA loader maps (``diffusion_model.<module>.lora_up.weight``,
    ``.alpha``, ``.diff``, ``.diff_b``), the modulation deltas (times the strength) for object patches and, ``live``,
    the low-rank pairs of linears as ``module -> (down, up, strength · scale)`` side branches."""
    tensors, modulation, branches = {}, {}, {}
    for key, entries in plan.entries.items():
        for entry in entries:
            module, base = entry.module, PREFIX + entry.module.name
            if live and entry.role == "pair" and module.mid is None and module.up.dim() == 2:
                branches[module.name] = (module.down, module.up, spec.strength * module.scale(spec.alpha))
            elif entry.role == "pair":
                tensors[f"{base}.lora_up.weight"] = module.up
                tensors[f"{base}.lora_down.weight"] = module.down
                if module.mid is not None:
                    tensors[f"{base}.lora_mid.weight"] = module.mid
                alpha = spec.alpha if spec.alpha is not None else module.alpha
                if alpha is not None:
                    tensors[f"{base}.alpha"] = torch.tensor(float(alpha))
            elif entry.role == "diff_m":
                modulation[key] = plan.entry_delta(entry)
            else:
                tensors[f"{base}.{entry.role}"] = getattr(module, entry.role)
    return tensors, modulation, branches


def _feed_float_inputs(clone, network, branches) -> None:
    """Object patches that keep a branched linear's input in float: the ops producing it (a fused LayerNorm / GELU
    quantization on CUDA) return float instead, as the library's `attach_loras` arranges, so the branch sees the
    exact input."""
    by_block: dict[str, set[str]] = {}
    for name in branches:
        if name.startswith("blocks."):
            block, _, layer = name.removeprefix("blocks.").partition(".")
            by_block.setdefault(block, set()).add(layer)
    for index, layers in by_block.items():
        block = network.blocks[int(index)]
        names = block.producers_of(layers)
        if not names:
            continue
        ops_key = f"{PREFIX}blocks.{index}.ops"
        ops = clone.get_model_object(ops_key).float_inputs(names)
        clone.add_object_patch(ops_key, ops)
        if f"{block.name}.ffn.2" in names:
            clone.add_object_patch(f"{PREFIX}blocks.{index}.ffn.1", ops.gelu_tanh(name=f"{block.name}.ffn.2"))


class _SideBranches:
    """A linear's forward plus low-rank branches ``Σ factor · up(down(x))`` (the live mode's object patch)."""

    def __init__(self, linear: torch.nn.Module, branches: tuple):
        self.linear, self.branches = linear, branches
        self._on: dict = {}

    def _factors(self, device: torch.device, dtype: torch.dtype):
        if (device, dtype) not in self._on:
            self._on = {(device, dtype): [(down.to(device, dtype), up.to(device, dtype), factor)
                                          for down, up, factor in self.branches]}
        return self._on[(device, dtype)]

    def __call__(self, x):
        out = type(self.linear).forward(self.linear, x)
        # a fused producer's quantized input is dequantized for the branch (its rounding enters the small term)
        branch_in = x.dequantize() if isinstance(x, QuantizedActivation) else x
        for down, up, factor in self._factors(out.device, torch.float32):
            out = out + (F.linear(F.linear(branch_in.float(), down), up) * factor).to(out.dtype)
        return out

