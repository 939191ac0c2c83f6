"""Matching a stack of LoRAs against a model's tensors and computing the merged tensors (spec formats.md §9.4-9.5).

`LoraPlan(loras, shapes)` checks every entry once (shape mismatch or nothing matched -> `IncompatibleLoraError`;
absent targets -> one summary line per LoRA) and then answers `delta(key)`: the fp32 sum, in stack order, of
``strength · scale · up @ down`` and ``strength · diff``. `MergedTensors` is a lazy state dict that applies the plan
while tensors are read: float tensors take the delta directly; quantized layers are dequantized, merged and
re-quantized with fresh scales of the layer's own scheme (LightX2V converter semantics); `merged_view` wraps it as a
loader `TensorView`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Iterator, Mapping, Sequence

import torch

from ...errors import IncompatibleLoraError
from ...kernels.quantize import quantize_weight
from ...kernels.quantized import QuantScheme
from ...models.wan_dit import tensor_shapes
from ..files.views import TensorEntry, TensorView
from .format import LoraFile, LoraModule

log = logging.getLogger(__name__)

# Targets that exist only in models with the Wan2.1 CLIP image branch; a Wan2.1 I2V LoRA on a Wan2.2 A14B expert
# carries them, and users asked for one info line instead of a warning per key (spec §9.7).
IMAGE_BRANCH = re.compile(r"\.(k_img|v_img|norm_k_img)\.|^img_emb\.")

# LoRA role -> (parameter name under the module, LoraModule field holding the delta).
ROLE_TARGETS = {"pair": "weight", "diff": "weight", "diff_b": "bias", "diff_m": "modulation"}

# The one shape mismatch that is skipped rather than refused: a patch-embedding delta written for another input
# channel count (a T2V LoRA's 16 channels on a 36-channel I2V model; spec §9.4). Every block still matches.
_INPUT_CHANNELS_MAY_DIFFER = ("patch_embedding.weight",)

_SHOWN = 4  # keys named in a summary line


@dataclasses.dataclass(frozen=True)
class AppliedLora:
    """One LoRA of a stack: the parsed file, its strength (any float) and an optional alpha overriding the file's."""

    lora: LoraFile
    strength: float = 1.0
    alpha: float | None = None


@dataclasses.dataclass(frozen=True)
class LoraEntry:
    """One delta of one LoRA on one model tensor."""

    index: int          # position of the LoRA in the stack
    module: LoraModule
    role: str           # "pair", "diff", "diff_b" or "diff_m"

    @property
    def target(self) -> str:
        """The official model tensor this entry changes."""
        return f"{self.module.name}.{ROLE_TARGETS[self.role]}"

    def file_key(self) -> str:
        return self.module.keys["up" if self.role == "pair" else self.role]

    def shape(self) -> tuple[int, ...]:
        return self.module.pair_shape() if self.role == "pair" else tuple(getattr(self.module, self.role).shape)


class LoraPlan:
    """Which LoRA entry lands on which model tensor, checked against the model's shapes.

    Args:
        loras: the stack, applied in order.
        shapes: official tensor key -> shape of the model (quantized layers: the codes' shape ``[out, in]``).
        source: the model's name for messages.

    Raises:
        IncompatibleLoraError: an entry's shape does not fit its target (names the key and both shapes), or a
            LoRA with entries matches no tensor of the model at all (names one key).
    """

    def __init__(self, loras: Sequence[AppliedLora], shapes: Mapping[str, Sequence[int]], source: str = "the model"):
        self.loras = list(loras)
        self.shapes = {key: tuple(shape) for key, shape in shapes.items()}
        self.entries: dict[str, list[LoraEntry]] = {}
        self.skipped: list[str] = []  # file keys that match no tensor of the model (image-branch keys excluded)
        for index, applied in enumerate(self.loras):
            self._match(index, applied, source)

    def _match(self, index: int, applied: AppliedLora, source: str) -> None:
        lora = applied.lora
        image_branch, skipped, matched = [], list(lora.unmapped), 0
        for module in lora.modules.values():
            roles = (["pair"] if module.has_pair else []) + [r for r in ("diff", "diff_b", "diff_m")
                                                           if getattr(module, r) is not None]
            for role in roles:
                entry = LoraEntry(index, module, role)
                key = entry.target
                if key not in self.shapes:
                    (image_branch if IMAGE_BRANCH.search(key) else skipped).append(entry.file_key())
                    continue
                if not _fits(entry.shape(), self.shapes[key], role):
                    if key in _INPUT_CHANNELS_MAY_DIFFER and entry.shape()[0] == self.shapes[key][0]:
                        skipped.append(f"{entry.file_key()} (input channels {_input_size(entry)}, the model has "
                                       f"{math.prod(self.shapes[key][1:])})")
                        continue
                    raise IncompatibleLoraError(
                        f"LoRA {lora.name} does not fit {source}: {entry.file_key()!r} gives {key} the shape "
                        f"{entry.shape()} but the model's tensor is {self.shapes[key]}. The LoRA was made for "
                        "another architecture (e.g. Wan 1.3B vs 14B); use one made for this model")
                self.entries.setdefault(key, []).append(entry)
                matched += 1
        if not matched and (lora.modules or lora.unmapped):
            example = (skipped + image_branch)[0]
            total = len(lora.unmapped) + sum(len(module.keys) for module in lora.modules.values())
            raise IncompatibleLoraError(
                f"LoRA {lora.name} matches nothing in {source}: none of its {total} keys (e.g. {example}) names a "
                "tensor of this model. It was made for another model family (e.g. Flux or SDXL) or another Wan "
                "variant; use a LoRA made for this model")
        log.info("LoRA %s: strength %g, %d entries applied%s", lora.name, applied.strength, matched,
                 "" if applied.alpha is None else f", alpha {applied.alpha:g} given")
        if image_branch:
            log.info("LoRA %s: %d image-branch entries (k_img, v_img, norm_k_img, img_emb) skipped: this model has "
                     "no CLIP image branch", lora.name, len(image_branch))
        if skipped:
            log.warning("LoRA %s: %d keys match nothing in this model and were skipped: %s", lora.name,
                        len(skipped), _summary(skipped))
        self.skipped += skipped

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def keys(self) -> list[str]:
        """Model tensor keys that receive at least one delta."""
        return list(self.entries)

    def entry_delta(self, entry: LoraEntry, strength: float | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
        """One entry's fp32 delta in its target's shape, on ``device``, times the strength (the stack's unless
        given) and, for a pair, the scale."""
        applied, shape = self.loras[entry.index], self.shapes[entry.target]
        strength = applied.strength if strength is None else strength
        if entry.role == "pair":
            factor = strength * entry.module.scale(applied.alpha)
            return entry.module.low_rank_delta(device).reshape(shape) * factor
        return getattr(entry.module, entry.role).to(device, torch.float32).reshape(shape) * strength

    def delta(self, key: str, device: torch.device | str | None = None) -> torch.Tensor | None:
        """Sum of every delta on ``key`` in stack order (fp32, on ``device``), or None when no LoRA touches it."""
        entries = self.entries.get(key)
        if not entries:
            return None
        total = self.entry_delta(entries[0], device=device)
        for entry in entries[1:]:
            total += self.entry_delta(entry, device=device)
        return total


def _fits(lora_shape: tuple[int, ...], model_shape: tuple[int, ...], role: str) -> bool:
    if role != "pair":
        return lora_shape == model_shape
    # up @ down is [out, in...]; conv weights take it flattened over their input and kernel dims.
    return lora_shape[0] == model_shape[0] and math.prod(lora_shape) == math.prod(model_shape) and (
        len(model_shape) > 2 or lora_shape == model_shape)


def _input_size(entry: LoraEntry) -> int:
    return math.prod(entry.shape()[1:])


def _summary(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def merged_float(tensor: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``tensor + delta`` computed in fp32 and cast back to the tensor's dtype."""
    return (tensor.float() + delta).to(tensor.dtype)


def merged_quantized(codes: torch.Tensor, scale: torch.Tensor, scheme: QuantScheme,
                     delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantize ``codes [out, in] * scale``, add the fp32 delta and quantize again with fresh scales.

    The scheme (and so the granularity: ``[out, 1]`` per channel, ``[1, 1]`` per tensor) stays the layer's, because
    the linear that consumes the weight was built for it.
    """
    return quantize_weight(codes.float() * scale.float() + delta, scheme)


class MergedTensors(Mapping[str, torch.Tensor]):
    """A base model's tensors with a `LoraPlan` merged in as each tensor is read (one tensor in memory at a time).

    Args:
        base: official key -> tensor (lazy mapping welcome), quantized layers in canonical form
            (``<layer>.weight`` codes + ``<layer>.weight_scale``).
        plan: the LoRA plan, matched against ``base``'s shapes.
        layers: quantized layer name (no ``.weight``) -> scheme, as the loader detected them; they stay quantized
            (merged layers re-quantized). For fp32 weights throughout (export), pass `quantization.dequantized`
            tensors and no layers.
    """

    def __init__(self, base: Mapping[str, torch.Tensor], plan: LoraPlan,
                 layers: Mapping[str, QuantScheme] | None = None):
        self.base, self.plan, self.layers = base, plan, dict(layers or {})
        self.name = getattr(base, "name", "state dict")
        self._keys = list(base)
        self._last: tuple[str, torch.Tensor, torch.Tensor] | None = None  # the pair of the last re-quantized layer

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def shapes(self) -> dict[str, tuple[int, ...]]:
        base = tensor_shapes(self.base)
        return {key: base[key] for key in self._keys}

    def _quantized_layer(self, key: str) -> str | None:
        for suffix in (".weight", ".weight_scale"):
            if key.endswith(suffix) and key[: -len(suffix)] in self.layers:
                return key[: -len(suffix)]
        return None

    def __getitem__(self, key: str) -> torch.Tensor:
        layer = self._quantized_layer(key)
        if layer is None:
            tensor = self.base[key]
            delta = self.plan.delta(key)
            return tensor if delta is None else merged_float(tensor, delta)
        weight_key = f"{layer}.weight"
        if weight_key not in self.plan:
            return self.base[key]
        if self._last is None or self._last[0] != layer:
            codes, scale = merged_quantized(self.base[weight_key], self.base[f"{layer}.weight_scale"],
                                            self.layers[layer], self.plan.delta(weight_key))
            self._last = (layer, codes, scale)
        return self._last[1] if key == weight_key else self._last[2]


def merged_view(view: TensorView, plan: LoraPlan, layers: Mapping[str, QuantScheme]) -> TensorView:
    """`MergedTensors` over a loader's view, again as a `TensorView` (same keys, shapes and dtypes), so that the
    loader's lazy conversions (the ``quantization`` choice) can follow the merge."""
    merged = MergedTensors(view, plan, layers)
    return TensorView({key: TensorEntry(entry.shape, entry.dtype, lambda key=key: merged[key])
                       for key, entry in view.entries.items()}, view.name)
