"""LoRA files of every key style (spec formats.md §9.1-9.3) -> one normalized `LoraFile` with official module names.

Entry points: `read_lora(path)` and `parse_lora(tensors, source)`. Each key is split into a module path and a
suffix (``lora_up.weight``, ``lora_A.default.weight``, ``alpha``, ``diff``, ``diff_b``, ``diff_m``...), prefixes are
stripped, and the module path is mapped to an official name through explicit tables: official dotted names, diffusers
names (`diffusers_keys`), and both of those with ``.`` written as ``_`` (kohya ``lora_unet_...``). Keys that map to
nothing are kept in `LoraFile.unmapped` for the caller's one-line summary.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Mapping

import torch

from ...errors import IncompatibleLoraError, ModelFormatError
from ..diffusers_keys import BLOCK_MODULES, TOP_MODULES
from ..files import open_tensors
from ..files.boundary import boundary, shown

# Key suffix -> role, longest first where one suffix ends another (spec §9.2).
SUFFIXES = (
    (".lora_B.default.weight", "up"), (".lora_A.default.weight", "down"),
    (".lora_linear_layer.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
    (".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_mid.weight", "mid"),
    ("_lora.up.weight", "up"), ("_lora.down.weight", "down"),
    (".lora.up.weight", "up"), (".lora.down.weight", "down"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"),
    (".lora_B", "up"), (".lora_A", "down"),
    (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff_m", "diff_m"), (".diff", "diff"),
)

# Adapter types whose math is not a low-rank or full delta; applying only part of them would be silently wrong.
UNSUPPORTED_ADAPTERS = {
    ".dora_scale": "DoRA", ".hada_w1_a": "LoHa", ".lokr_w1": "LoKr", ".lokr_w1_a": "LoKr", ".oft_blocks": "OFT",
    ".oft_R": "BOFT", ".w_norm": "norm-weight", ".set_weight": "set-weight", ".reshape_weight": "reshape-weight",
}

# Prefixes in front of the module path, stripped repeatedly (PEFT wraps a diffusers name: base_model.model.transformer.).
DOTTED_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "pipe.dit.")
# kohya-style prefixes: the rest of the module path has "." written as "_" (Wan-Fun doubles the underscore).
UNDERSCORED_PREFIXES = ("lora_unet__", "lora_unet_", "lycoris_")

# Official module paths that can carry LoRA tensors ("{N}" = block index). "blocks.{N}" and "head" carry ``diff_m``;
# "<parent>.modulation" carries kijai's ``.diff`` form of it.
OFFICIAL_MODULES = (
    "patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
    "time_projection.1", "head", "head.head", "head.modulation", "img_emb.proj.0", "img_emb.proj.1", "img_emb.proj.3",
    "img_emb.proj.4", "blocks.{N}", "blocks.{N}.modulation", "blocks.{N}.norm3", "blocks.{N}.ffn.0", "blocks.{N}.ffn.2",
    *(f"blocks.{{N}}.self_attn.{m}" for m in ("q", "k", "v", "o", "norm_q", "norm_k")),
    *(f"blocks.{{N}}.cross_attn.{m}" for m in ("q", "k", "v", "o", "norm_q", "norm_k", "k_img", "v_img",
                                                "norm_k_img")),
)

# (source-name template, official template): official names map to themselves, diffusers names through §6.1.
_MODULE_TABLE = (
    *((name, name) for name in OFFICIAL_MODULES),
    *TOP_MODULES.items(),
    *((f"blocks.{{N}}.{diffusers}", f"blocks.{{N}}.{official}") for diffusers, official in BLOCK_MODULES.items()),
)


def _template_regex(template: str, separator: str) -> re.Pattern:
    parts = [r"(\d+)" if part == "{N}" else re.escape(part) for part in template.split(".")]
    return re.compile(re.escape(separator).join(parts))


_DOTTED = [(_template_regex(src, "."), dst) for src, dst in _MODULE_TABLE]
_UNDERSCORED = [(_template_regex(src, "_"), dst) for src, dst in _MODULE_TABLE]


@dataclasses.dataclass
class LoraModule:
    """What one LoRA holds for one official module (e.g. ``blocks.3.ffn.0``); every field optional.

    Attributes:
        name: official module path, without ``.weight``.
        up: ``B`` ``[out, r]`` (or ``[out, r, 1, 1, 1]`` for the patch-embedding conv).
        down: ``A`` ``[r, in]`` (or ``[r, C_in, kt, kh, kw]``).
        mid: optional LoCon/Tucker core ``[r, r]`` (or ``[r, r, kt, kh, kw]``); delta = up · mid · down.
        alpha: the file's alpha for this module; scale = alpha / rank when known, else 1.
        diff: full delta of ``<name>.weight``; diff_b: delta of ``<name>.bias``; diff_m: delta of ``<name>.modulation``.
        keys: file keys that went into this module (for messages).
    """

    name: str
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    mid: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None
    diff_m: torch.Tensor | None = None
    keys: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def has_pair(self) -> bool:
        return self.up is not None and self.down is not None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def scale(self, alpha: float | None = None) -> float:
        """``alpha / rank`` with the user's alpha if given, else the file's; 1 when neither exists (spec §9.4)."""
        alpha = self.alpha if alpha is None else alpha
        return 1.0 if alpha is None else alpha / self.rank

    def pair_shape(self) -> tuple[int, ...]:
        """Shape of ``up @ down`` before reshaping to the weight: ``(out, in)`` or ``(out, in, *kernel)`` with a mid."""
        kernel = tuple(self.mid.shape[2:]) if self.mid is not None else ()
        return (self.up.shape[0], math.prod(self.down.shape[1:]), *kernel)

    def low_rank_delta(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``up @ (mid @) down`` in fp32 on ``device``, shape `pair_shape()` (the caller reshapes and scales)."""
        up, down = self.up.to(device, torch.float32).flatten(1), self.down.to(device, torch.float32).flatten(1)
        if self.mid is None:
            return up @ down
        return torch.einsum("oa,ab...,bi->oi...", up, self.mid.to(device, torch.float32), down)

    def linear_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(down ``[r, in]``, up ``[out, r]``) for a linear side branch, a 2-D mid folded into ``up``."""
        down, up = self.down.flatten(1), self.up.flatten(1)
        if self.mid is not None:
            up = (up.float() @ self.mid.float()).to(up.dtype)
        return down, up


@dataclasses.dataclass
class LoraFile:
    """A parsed LoRA: official module name -> `LoraModule`, plus the keys nothing could be made of.

    Attributes:
        name: file name (for messages and export metadata).
        modules: official module path -> what the file holds for it.
        unmapped: original keys whose style or module path is unknown, or that do not form a usable entry
            (an ``up`` without its ``down``, an alpha alone).
    """

    name: str
    modules: dict[str, LoraModule]
    unmapped: list[str]


@boundary("LoRA")
def read_lora(path: str | Path) -> LoraFile:
    """Read a LoRA ``.safetensors`` (or a tensor-only ``.pt``/``.pth``) and parse it with `parse_lora`."""
    path = Path(path)
    return parse_lora(open_tensors(path, name=shown(path), what="LoRA file"), source=shown(path))


def parse_lora(tensors: Mapping[str, torch.Tensor], source: str) -> LoraFile:
    """Normalize the keys of a LoRA state dict (any style of spec §9.2-9.3) to official module names.

    Raises:
        IncompatibleLoraError: the file holds an adapter type that is not a low-rank or full delta (DoRA, LoHa...).
        ModelFormatError: two keys land on the same entry, an up/down pair disagrees on the rank, or a tensor is
            unusable (`check_lora_tensor`: wrong rank, zero size, not float, NaN/Inf).
    """
    modules: dict[str, LoraModule] = {}
    unmapped: list[str] = []
    for key, tensor in tensors.items():
        for suffix, adapter in UNSUPPORTED_ADAPTERS.items():
            if key.endswith(suffix):
                raise IncompatibleLoraError(
                    f"{source}: key {key!r} belongs to a {adapter} adapter, which Wan Express does not apply "
                    "(only low-rank up/down pairs and full diffs); load this file with ComfyUI's LoRA loader")
        split = _split_key(key)
        module_path = _official_module(split[0]) if split else None
        if module_path is None:
            unmapped.append(key)
            continue
        role = split[1]
        modulation = re.fullmatch(r"(.+)\.modulation", module_path)
        if role == "diff" and modulation:  # kijai's form of diff_m: <parent>.modulation.diff
            module_path, role = modulation.group(1), "diff_m"
        module = modules.setdefault(module_path, LoraModule(module_path))
        if role in module.keys:
            raise ModelFormatError(f"{source}: keys {module.keys[role]!r} and {key!r} both give the {role} of "
                                   f"{module_path}; the file mixes two naming styles for one module")
        module.keys[role] = key
        tensor = check_lora_tensor(tensor, role, key, source)
        setattr(module, role, float(tensor.float().reshape(-1)[0]) if role == "alpha" else tensor)
    for name in list(modules):
        module = modules[name]
        if (module.up is None) != (module.down is None) or (module.mid is not None and not module.has_pair):
            unmapped += [module.keys[role] for role in ("up", "down", "mid") if role in module.keys]
            module.up = module.down = module.mid = None
        if module.has_pair:
            _check_ranks(module, source)
        elif module.alpha is not None:
            unmapped.append(module.keys["alpha"])
            module.alpha = None
        if not module.has_pair and module.diff is None and module.diff_b is None and module.diff_m is None:
            del modules[name]
    return LoraFile(name=source, modules=modules, unmapped=sorted(unmapped))


# Least rank of each role's tensor: factors are matrices (or conv kernels), alpha a scalar (0-D or one element).
_LEAST_RANK = {"up": 2, "down": 2, "mid": 2, "alpha": 0, "diff": 1, "diff_b": 1, "diff_m": 1}


def check_lora_tensor(tensor: torch.Tensor, role: str, key: str, source: str) -> torch.Tensor:
    """``tensor`` if it can serve as the ``role`` of a LoRA module, else a `ModelFormatError` naming ``key``.

    Refused: meta or sparse tensors, non-float dtypes, fewer dimensions than the role needs (0-D up/down), zero
    sizes (rank 0, empty tensors), an alpha of more than one element, and NaN/Inf anywhere (they
    would turn every merged weight into NaN).
    """
    if tensor.is_meta or tensor.layout != torch.strided:
        raise ModelFormatError(f"{source}: LoRA tensor {key!r} holds no dense data")
    if not tensor.is_floating_point():
        raise ModelFormatError(f"{source}: LoRA tensor {key!r} is {str(tensor.dtype).removeprefix('torch.')}; "
                               "LoRA weights are floats")
    if tensor.dim() < _LEAST_RANK[role] or 0 in tensor.shape:
        raise ModelFormatError(f"{source}: LoRA tensor {key!r} has shape {tuple(tensor.shape)}, unusable as a "
                               f"LoRA {role}" + (" (rank 0)" if role in ("up", "down") and 0 in tensor.shape else ""))
    if role == "alpha" and tensor.numel() != 1:
        raise ModelFormatError(f"{source}: LoRA alpha {key!r} has {tensor.numel()} elements; an alpha is one number")
    if not bool(torch.isfinite(tensor.float()).all()):
        raise ModelFormatError(f"{source}: LoRA tensor {key!r} holds NaN or Inf values; the file is damaged")
    return tensor


def _split_key(key: str) -> tuple[str, str] | None:
    """(module path as written, role), or None when no known suffix ends the key."""
    for suffix, role in SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], role
    return None


def _official_module(path: str) -> str | None:
    """Official module path for a module path of any prefix and naming style; None when it maps to nothing."""
    for prefix in UNDERSCORED_PREFIXES:
        if path.startswith(prefix):
            return _match(path[len(prefix):], _UNDERSCORED)
    stripped = True
    while stripped:
        stripped = False
        for prefix in DOTTED_PREFIXES:
            if path.startswith(prefix):
                path, stripped = path[len(prefix):], True
    return _match(path, _DOTTED)


def _match(path: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, official in table:
        found = pattern.fullmatch(path)
        if found:
            return official.replace("{N}", found.group(1)) if found.groups() else official
    return None


def _check_ranks(module: LoraModule, source: str) -> None:
    up_rank, down_rank = module.up.flatten(1).shape[1], module.down.shape[0]
    mid_ranks = tuple(module.mid.shape[:2]) if module.mid is not None else (up_rank, down_rank)
    if mid_ranks != (up_rank, down_rank) or (module.mid is None and up_rank != down_rank):
        raise ModelFormatError(
            f"{source}: {module.keys['up']!r} has rank {up_rank} but {module.keys['down']!r} has rank {down_rank}"
            + (f" (mid {tuple(module.mid.shape)})" if module.mid is not None else "") + "; the file is corrupt")
