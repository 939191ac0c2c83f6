"""Which files make up the DiT a user pointed at (formats.md §3.3, §4.5, §10): never glob-and-merge.

Entry point: `resolve(path, file=None)` -> `ModelUnit` (one DiT's files) or `ModelPair` (Wan2.2 A14B experts).
Rules, in order, for a folder: expert subfolders give a pair; a shard index names exactly the files to read;
``non_block`` + ``block_N`` files form a split folder; ``diffusion_pytorch_model*`` shards form an official
folder; otherwise the single DiT file (or model subfolder) is picked when there is exactly one, and with several
the caller names one: the error lists the choices.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ...errors import MissingComponentError, ModelFormatError, UnsupportedModelError
from ...expert_names import EXPERTS, FOLDERS, HIGH, LOW, expert_in_name
from ..files.boundary import shown
from ..files.header import read_header
from ..files.json_files import contained_path, read_json
from .formats import ANCHOR_KEYS, DIFFUSERS_ANCHOR_KEYS
from .layouts import find_prefix

INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
INDEX_SUFFIX = ".safetensors.index.json"
SHARD_GLOB = "diffusion_pytorch_model*.safetensors"
CONFIG_NAME = "config.json"
SPLIT_NON_BLOCK = "non_block.safetensors"
_SPLIT_BLOCK = re.compile(r"^block_(\d+)\.safetensors$")

# Expert subfolders: (high, low). Official Wan2.2 A14B, then a diffusers pipeline (transformer = high noise).
PAIR_FOLDERS = (tuple(FOLDERS[expert] for expert in EXPERTS), ("transformer", "transformer_2"))
# Subfolders that hold one model each: diffusers pipelines and legacy LightX2V trees (formats.md §4.6).
MODEL_SUBFOLDERS = ("transformer", "original", "fp8", "int8", "distill_models", "distill_fp8", "distill_int8")
# .pth/.pt names that hold a DiT (the first LightX2V distill release); other .pth files are encoders and VAEs.
PTH_MODEL_STEMS = ("distill_model", "diffusion_pytorch_model")
UNSUPPORTED_SUFFIXES = {".gguf": "GGUF files are not supported; load them with ComfyUI-GGUF"}


@dataclasses.dataclass(frozen=True)
class ModelUnit:
    """The files of one DiT.

    Attributes:
        path: the file or folder holding it.
        container: ``single_file``, ``pth_file``, ``model_folder`` (shards of ``diffusion_pytorch_model``),
            ``split_folder`` (LightX2V ``non_block`` + ``block_N``) or ``indexed_folder`` (another index).
        key_files: key -> file from a shard index, or None to take every key of ``files``.
        files: the weight files, in reading order.
        config: the folder's ``config.json`` (a cross-check only), or None.
        role: ``"high"`` / ``"low"`` expert when the name or folder says so, else None.
    """

    path: Path
    container: str
    files: list[Path]
    key_files: dict[str, Path] | None = None
    config: Path | None = None
    role: str | None = None


@dataclasses.dataclass(frozen=True)
class ModelPair:
    """The two experts of a Wan2.2 A14B model (high noise runs the first steps)."""

    path: Path
    high: ModelUnit
    low: ModelUnit


def role_from_name(path: Path) -> str | None:
    """``"high"`` / ``"low"`` from the file (or folder) name, else from the folder it lies in (`expert_in_name`:
    a ``high_noise`` / ``low_noise`` token, else a standalone ``high`` / ``low``)."""
    for part in (path.name, path.parent.name):
        if role := expert_in_name(part)[0]:
            return role
    return None


def pair_folders(folder: Path) -> tuple[Path, Path] | None:
    """The (high, low) expert subfolders of a Wan2.2 A14B folder, or None."""
    for high, low in PAIR_FOLDERS:
        if (folder / high).is_dir() and (folder / low).is_dir():
            return folder / high, folder / low
    return None


def resolve(path: str | Path, file: str | None = None, *, role: str | None = None) -> ModelUnit | ModelPair:
    """The DiT files behind ``path``; ``file`` names one model inside a folder that holds several.

    Raises:
        MissingComponentError: nothing there, or no DiT in the folder.
        ModelFormatError: several DiT models and none named (the message lists them), or a bad index.
    """
    path = Path(path)
    if file is not None:
        if not path.is_dir():
            raise ModelFormatError(f"{path}: file={file!r} names a model inside a folder, but this is not a folder")
        chosen = contained_path(path, file, path, "model")
        if not chosen.exists():
            raise MissingComponentError(f"{path}: {file!r} not found; models here: "
                                        f"{', '.join(_describe(c) for c in candidates(path)) or 'none'}")
        return resolve(chosen, role=role)
    if path.is_file():
        return _single_file(path, role or role_from_name(path))
    if not path.is_dir():
        raise MissingComponentError(f"{path}: no such file or folder")
    experts = pair_folders(path)
    if experts is not None:
        return ModelPair(path, _as_unit(resolve(experts[0], role=HIGH), experts[0]),
                         _as_unit(resolve(experts[1], role=LOW), experts[1]))
    role = role or role_from_name(path)
    config = path / CONFIG_NAME if (path / CONFIG_NAME).is_file() else None
    unit = _folder_unit(path, config, role)
    if unit is not None:
        return unit
    choices = candidates(path)
    if len(choices) == 1:
        return resolve(choices[0], role=role)
    if not choices:
        raise MissingComponentError(
            f"{path}: no DiT weights found (expected {INDEX_NAME} or {SHARD_GLOB}, a split folder with "
            f"{SPLIT_NON_BLOCK}, or one model file){_others(path)}")
    raise ModelFormatError(
        f"{path} holds {len(choices)} DiT models: {'; '.join(_describe(c) for c in choices)}. They are never "
        "merged: name the one to load (file=... in Python, the 'file' input of the DiT loader node)")


def _as_unit(found: ModelUnit | ModelPair, path: Path) -> ModelUnit:
    if isinstance(found, ModelPair):
        raise ModelFormatError(f"{path}: an expert folder holds expert subfolders itself")
    return found


def _single_file(path: Path, role: str | None) -> ModelUnit:
    suffix = path.suffix.lower()
    if suffix in UNSUPPORTED_SUFFIXES:
        raise UnsupportedModelError(f"{path}: {UNSUPPORTED_SUFFIXES[suffix]}")
    if suffix == ".safetensors":
        return ModelUnit(path, "single_file", [path], role=role)
    if suffix in (".pth", ".pt"):
        return ModelUnit(path, "pth_file", [path], role=role)
    raise ModelFormatError(f"{path}: not a model file (expected .safetensors, .pth or .pt, or a model folder)")


def _folder_unit(folder: Path, config: Path | None, role: str | None) -> ModelUnit | None:
    indexes = sorted(folder.glob("*" + INDEX_SUFFIX))
    if (folder / INDEX_NAME).is_file():
        indexes = [folder / INDEX_NAME]
    if len(indexes) == 1:
        key_files = _read_index(indexes[0])
        files = list(dict.fromkeys(key_files.values()))
        container = "split_folder" if folder / SPLIT_NON_BLOCK in files else (
            "model_folder" if indexes[0].name == INDEX_NAME else "indexed_folder")
        return ModelUnit(folder, container, files, key_files=key_files, config=config, role=role)
    if len(indexes) > 1:
        raise ModelFormatError(f"{folder} holds several shard indexes ({', '.join(i.name for i in indexes)}); "
                               "keep one model per folder or name the files to load")
    if (folder / SPLIT_NON_BLOCK).is_file():
        blocks = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _SPLIT_BLOCK.match(p.name)))
        if [n for n, _ in blocks] != list(range(len(blocks))):
            raise ModelFormatError(f"{folder}: split folder block files are not block_0 ... block_N without gaps "
                                   f"(found {[n for n, _ in blocks]})")
        files = [folder / SPLIT_NON_BLOCK] + [p for _, p in blocks]
        return ModelUnit(folder, "split_folder", files, config=config, role=role)
    shards = sorted(folder.glob(SHARD_GLOB))
    if shards:
        return ModelUnit(folder, "model_folder", shards, config=config, role=role)
    return None


def _read_index(index: Path) -> dict[str, Path]:
    """key -> shard of a shard index; shard names go through `contained_path` (never outside the index's folder; a
    symlink inside it, as download caches make, stays allowed) and messages do not repeat what the file says."""
    weight_map = read_json(index, "shard index").get("weight_map")
    if not isinstance(weight_map, dict):
        raise ModelFormatError(f"{shown(index)}: not a shard index: it has no 'weight_map' object")
    return {key: contained_path(index.parent, name, index, "shard") for key, name in weight_map.items()}


def _is_dit_file(path: Path) -> bool:
    """A safetensors file whose header holds DiT anchor keys (read from the header only)."""
    try:
        keys = read_header(path).tensors
    except ModelFormatError:
        return True  # a broken model file is still a candidate: loading it reports the problem
    return find_prefix(keys, ANCHOR_KEYS + DIFFUSERS_ANCHOR_KEYS) is not None


def candidates(folder: Path) -> list[Path]:
    """The DiT models a folder holds directly: model files (checked by header) and model subfolders."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix == ".safetensors" and _is_dit_file(p)]
    files += [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in (".pth", ".pt")
              and p.stem.startswith(PTH_MODEL_STEMS)]
    subfolders = [folder / name for name in MODEL_SUBFOLDERS if (folder / name).is_dir()]
    return files + [sub for sub in subfolders if _folder_unit(sub, None, None) is not None or candidates(sub)]


def _describe(path: Path) -> str:
    """``name (precision)`` for the choice list, from the header alone."""
    if path.is_dir():
        return f"{path.name}/ (folder)"
    if path.suffix != ".safetensors":
        return path.name
    try:
        tensors = read_header(path).tensors
    except ModelFormatError:
        return f"{path.name} (unreadable)"
    probe = next((info for key, info in tensors.items() if key.endswith("blocks.0.self_attn.q.weight")), None)
    precision = str(probe.dtype).removeprefix("torch.") if probe else "unknown"
    if any(key.endswith(("weight_scale", "scale_weight")) for key in tensors):
        precision += ", scaled"
    return f"{path.name} ({precision})"


def _others(folder: Path) -> str:
    names = [p.name for p in sorted(folder.iterdir())][:8]
    return f"; the folder holds: {', '.join(names)}" if names else "; the folder is empty"
