"""Find the non-DiT components of an official Wan folder: umT5 text encoder, its tokenizer, CLIP vision, VAE.

Entry points: `find_components(folder, **overrides) -> FolderComponents`. File names follow spec formats.md §3.1
and §8; an explicit path given for a component wins over discovery. `FolderComponents.require(name)` raises a
`MissingComponentError` that names the expected file and the place it was looked for. `resolve_component(root,
choice, field)`: a loader node's choice (a file, or a folder ending in ``/``) resolved inside its models folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import MissingComponentError, ModelFormatError, WanExpressError
from .files.boundary import boundary, shown
from .files.json_files import contained_path, read_json

TEXT_ENCODER_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
TOKENIZER_FILE = "tokenizer.json"
CLIP_VISION_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
VAE_FILES = ("Wan2.1_VAE.pth", "Wan2.2_VAE.pth")
# TI2V-5B is the only model that decodes with the Wan2.2 VAE (formats.md §3.1, §8.3).
_VAE_FOR_MODEL_TYPE = {"ti2v": "Wan2.2_VAE.pth"}

# Field name -> (plain-language name, what is expected inside the folder).
_EXPECTED = {
    "text_encoder": ("umT5-XXL text encoder", TEXT_ENCODER_FILE),
    "tokenizer": ("umT5 tokenizer", f"{TOKENIZER_DIR}/{TOKENIZER_FILE}"),
    "clip_vision": ("CLIP vision encoder (Wan2.1 I2V/FLF2V only)", CLIP_VISION_FILE),
    "vae": ("VAE", " or ".join(VAE_FILES)),
}


@dataclasses.dataclass(frozen=True)
class FolderComponents:
    """Paths of the components found for one model folder; None where absent.

    Attributes:
        text_encoder: umT5-XXL encoder weights (official ``.pth`` or a ComfyUI/HF ``.safetensors``).
        tokenizer: folder holding ``tokenizer.json`` (the official ``google/umt5-xxl/``).
        clip_vision: CLIP ViT-H/14 weights (official ``.pth`` or ComfyUI ``clip_vision_h.safetensors``).
        vae: Wan2.1 or Wan2.2 VAE weights.
        folder: the model folder searched, or None when every path was given explicitly.
    """

    text_encoder: Path | None
    tokenizer: Path | None
    clip_vision: Path | None
    vae: Path | None
    folder: Path | None = None

    def missing(self) -> list[str]:
        """Plain-language names of the absent components, e.g. ``["CLIP vision encoder (...)"]``."""
        return [label for field, (label, _) in _EXPECTED.items() if getattr(self, field) is None]

    def require(self, field: str) -> Path:
        """The path of component ``field`` (a field name above); raise MissingComponentError when absent."""
        path = getattr(self, field)
        if path is not None:
            return path
        label, expected = _EXPECTED[field]
        where = f"in {shown(self.folder)}" if self.folder is not None else "(no model folder given)"
        raise MissingComponentError(
            f"{label} not found: expected {expected} {where}. Put the file there or pass its path explicitly")


def find_components(folder: str | Path | None, *, text_encoder: str | Path | None = None,
                    tokenizer: str | Path | None = None, clip_vision: str | Path | None = None,
                    vae: str | Path | None = None) -> FolderComponents:
    """Discover the components of an official Wan folder; explicit paths override what is found.

    Args:
        folder: the official model folder (may be None when every needed path is given explicitly).
        text_encoder, clip_vision, vae: explicit weight files; each must exist.
        tokenizer: explicit tokenizer folder (holding ``tokenizer.json``) or the ``tokenizer.json`` itself.

    Raises:
        MissingComponentError: ``folder`` is not a folder, or an explicit path does not exist.
    """
    root = Path(folder) if folder is not None else None
    if root is not None and not _is(root, Path.is_dir):
        raise MissingComponentError(f"{shown(root)}: model folder not found (looked for its text encoder, tokenizer, "
                                    "CLIP vision and VAE files)")
    return FolderComponents(
        text_encoder=_explicit_file(text_encoder, "text_encoder") or _file_in(root, TEXT_ENCODER_FILE),
        tokenizer=_explicit_tokenizer(tokenizer) or _tokenizer_in(root),
        clip_vision=_explicit_file(clip_vision, "clip_vision") or _file_in(root, CLIP_VISION_FILE),
        vae=_explicit_file(vae, "vae") or _vae_in(root),
        folder=root)


def _explicit_file(path: str | Path | None, field: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not _is(path, Path.is_file):
        raise MissingComponentError(f"{shown(path)}: {_EXPECTED[field][0]} file not found (given explicitly)")
    return path


def _explicit_tokenizer(path: str | Path | None) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if _is(path, Path.is_file) and path.name == TOKENIZER_FILE:
        return path.parent
    if not _is(path / TOKENIZER_FILE, Path.is_file):
        raise MissingComponentError(
            f"{shown(path)}: umT5 tokenizer not found (given explicitly): expected {TOKENIZER_FILE} in that folder")
    return path


def _file_in(root: Path | None, name: str) -> Path | None:
    if root is None:
        return None
    path = root / name
    return path if _is(path, Path.is_file) else None


def _tokenizer_in(root: Path | None) -> Path | None:
    if root is None:
        return None
    path = root / TOKENIZER_DIR
    return path if _is(path / TOKENIZER_FILE, Path.is_file) else None


def _vae_in(root: Path | None) -> Path | None:
    """The folder's VAE; when both Wan2.1 and Wan2.2 VAEs are present, ``config.json``'s model_type decides."""
    present = [name for name in VAE_FILES if _file_in(root, name) is not None]
    if not present:
        return None
    if len(present) > 1:
        preferred = _VAE_FOR_MODEL_TYPE.get(_model_type(root), VAE_FILES[0])
        return root / preferred
    return root / present[0]


def _model_type(root: Path) -> str | None:
    """config.json's model_type, or None where the file is absent or unreadable (discovery then takes Wan2.1's)."""
    try:
        model_type = read_json(root / "config.json", "config.json").get("model_type")
    except WanExpressError:
        return None
    return model_type if isinstance(model_type, str) else None


def _is(path: Path, test) -> bool:
    """``path.is_file()`` / ``is_dir()`` where a name the OS refuses (too long, invalid) is simply not there."""
    try:
        return test(path)
    except (OSError, ValueError):
        return False


@boundary("model choice", path_argument="root")
def resolve_component(root: str | Path, choice: object, field: str) -> Path:
    """The file of component ``field`` for a loader node's ``choice`` under the models folder ``root``.

    ``choice`` is a file below ``root`` or an official model folder (ending in ``/``), whose component is found by
    its official name (`find_components`). The choice comes from a workflow, so it is checked like a name read from
    a file (`contained_path`): never absolute, never ``..``, no NUL, not longer than a path can be.

    Raises:
        ModelFormatError: a choice that is not a usable name inside ``root``.
        MissingComponentError: nothing of that name, or a folder without the component.
    """
    if field not in _EXPECTED:
        raise ValueError(f"unknown component {field!r}; one of {', '.join(_EXPECTED)}")
    if not isinstance(choice, str):
        raise ModelFormatError(f"{shown(root)}: the model choice is a {type(choice).__name__}, not a name")
    path = contained_path(root, choice.rstrip("/"), root, what="model")
    if choice.endswith("/") or _is(path, Path.is_dir):
        if not _is(path, Path.is_dir):
            raise MissingComponentError(f"{shown(path)}: model folder not found")
        return find_components(path).require(field)
    if field == "tokenizer" or not _is(path, Path.is_file):
        raise MissingComponentError(f"{shown(path)}: {_EXPECTED[field][0]} file not found")
    return path
