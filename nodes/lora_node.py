"""Node: a LoRA on core Wan MODELs (``MODEL -> MODEL``, stackable), routed to the Wan2.2 expert it is for.

The file is read by the pack's own LoRA reader (every key style: LightX2V ``diffusion_model.*`` with ``diff`` /
``diff_b`` / ``diff_m``, kohya ``lora_unet_*``, diffusers, PEFT), checked against the model's shapes, and handed to
core's patcher as core-named patches on a clone (merged into the weights when the model loads, FP8 / INT8 codes
re-quantized by our linears, undone when another clone runs): the cached model is never modified. Modulation deltas
(``diff_m``), which core's patcher never applies to these non-leaf parameters, become object patches.
"""

from __future__ import annotations

import logging

import torch

from ..errors import IncompatibleLoraError
from ..expert_names import BOTH, EXPERTS, HIGH, LOW
from ..loaders.lora import AppliedLora, LoraPlan, LoraSpec, expert_of, read_lora
from . import host

log = logging.getLogger(__name__)

EXPERT_CHOICES = ("auto", *EXPERTS, BOTH)
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
            },
        }

    def apply(self, model, lora: str, strength: float, expert: str, model_low=None, alpha: float = 0.0):
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
            patched[role], line = apply_lora(targets[role], spec)
            lines.append(line if model_low is None else f"{role}-noise expert: {line}")
        report = f"{path.name} ({why}): " + "; ".join(lines)
        log.info("LoRA %s", report)
        return patched[HIGH], patched.get(LOW), report


def apply_lora(model, spec: LoraSpec):
    """A clone of core MODEL ``model`` carrying ``spec``'s LoRA as core patches; (clone, one-line report)."""
    import comfy.lora

    network = model.model.diffusion_model
    shapes = {key: tuple(tensor.shape) for key, tensor in network.state_dict().items()}
    lora_file = read_lora(spec.path)
    plan = LoraPlan([AppliedLora(lora_file, spec.strength, spec.alpha)], shapes, source="the connected model")
    core_named, modulation = _core_state_dict(plan, spec)
    clone = model.clone()
    patches = comfy.lora.load_lora(core_named, comfy.lora.model_lora_keys_unet(clone.model, {}), log_missing=False)
    added = clone.add_patches(patches, spec.strength)
    for key, delta in modulation.items():
        name = PREFIX + key
        current = clone.object_patches.get(name, network.get_parameter(key))
        clone.add_object_patch(name, torch.nn.Parameter(current.detach() + delta.to(current), requires_grad=False))
    missed = sorted({key.removeprefix(PREFIX) for key in patches} - {key.removeprefix(PREFIX) for key in added})
    unmatched = [*plan.skipped, *missed]
    if not added and not modulation:
        raise IncompatibleLoraError(f"LoRA {spec.path.name} changes nothing in this model")
    line = f"{len(added)} tensors patched" + (f", {len(modulation)} modulation deltas" if modulation else "")
    if unmatched:
        line += f"; {len(unmatched)} keys match nothing and were skipped (e.g. {', '.join(unmatched[:3])})"
    return clone, line


def _core_state_dict(plan: LoraPlan, spec: LoraSpec) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The plan's entries under the names core's LoRA loader maps (``diffusion_model.<module>.lora_up.weight``,
    ``.alpha``, ``.diff``, ``.diff_b``), and the modulation deltas (times the strength) for object patches."""
    tensors, modulation = {}, {}
    for key, entries in plan.entries.items():
        for entry in entries:
            module, base = entry.module, PREFIX + entry.module.name
            if entry.role == "pair":
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
    return tensors, modulation

