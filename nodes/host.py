"""The only bridge to ComfyUI's modules; everything degrades to empty lists outside the host."""

from __future__ import annotations

from pathlib import Path

from ..errors import MissingComponentError

# Folder-type models (official sharded folders, A14B parents) are listed from this key, single files from core's.
FOLDER_KEY = "wan_express"
FILE_KEY = "diffusion_models"


def _folder_paths():
    try:
        import folder_paths
    except ImportError:
        return None
    return folder_paths


def register_model_folders() -> None:
    """Add ``models/wan_express`` for folder-type models (called once at pack import inside ComfyUI)."""
    folder_paths = _folder_paths()
    if folder_paths is not None and FOLDER_KEY not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER_KEY, str(Path(folder_paths.models_dir) / FOLDER_KEY), is_default=True)


def list_dit_models() -> list[str]:
    """Choices for a DiT loader: single files from ``diffusion_models`` and model folders from ``wan_express``."""
    folder_paths = _folder_paths()
    if folder_paths is None:
        return []
    files = [name for name in folder_paths.get_filename_list(FILE_KEY) if name.endswith(".safetensors")]
    folders = []
    for root in folder_paths.get_folder_paths(FOLDER_KEY):
        root_path = Path(root)
        if root_path.is_dir():
            # every model folder (official, A14B parent, split, diffusers); the loader names what it finds
            folders += [f"{child.name}/" for child in sorted(root_path.iterdir())
                        if child.is_dir() and not child.name.startswith(".")]
    return folders + files


def resolve_dit_model(choice: str) -> Path:
    """Full path of a choice made from `list_dit_models`."""
    folder_paths = _folder_paths()
    if choice.endswith("/"):
        for root in folder_paths.get_folder_paths(FOLDER_KEY):
            candidate = Path(root) / choice.rstrip("/")
            if candidate.is_dir():
                return candidate
        raise MissingComponentError(f"model folder {choice!r} not found under models/{FOLDER_KEY}")
    return Path(folder_paths.get_full_path_or_raise(FILE_KEY, choice))


def torch_device():
    """ComfyUI's compute device, or CPU outside the host."""
    try:
        import comfy.model_management
    except ImportError:
        return "cpu"
    return comfy.model_management.get_torch_device()
