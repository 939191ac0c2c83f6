"""The only bridge to ComfyUI's modules; everything degrades to empty lists outside the host."""

from __future__ import annotations

from pathlib import Path

from ..errors import MissingComponentError
from ..models.latent_spaces import LATENT_SPACES

# Folder-type models (official sharded folders, A14B parents) are listed from this key, single files from core's.
FOLDER_KEY = "wan_express"


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


def _roots() -> list[Path]:
    folder_paths = _folder_paths()
    if folder_paths is None:
        return []
    return [Path(root) for root in folder_paths.get_folder_paths(FOLDER_KEY) if Path(root).is_dir()]


def model_folders() -> list[str]:
    """Every folder under ``models/wan_express`` (official, A14B parent, split, diffusers), as ``name/``."""
    return [f"{child.name}/" for root in _roots() for child in sorted(root.iterdir())
            if child.is_dir() and not child.name.startswith(".")]


def lightx2v_configs() -> list[str]:
    """LightX2V config files (``*.json``) directly under ``models/wan_express``; they name model files and LoRAs."""
    return [child.name for root in _roots() for child in sorted(root.glob("*.json"))]


def list_models(file_key: str) -> list[str]:
    """Choices for a loader: model folders from ``wan_express`` (``name/``), then files of ``file_key``."""
    return model_folders() + list_files(file_key)


def resolve_model(file_key: str, choice: str) -> Path:
    """Full path of a choice made from `list_models` (or `lightx2v_configs`)."""
    if choice.endswith(("/", ".json")):
        for root in _roots():
            candidate = root / choice.rstrip("/")
            if candidate.exists():
                return candidate
        raise MissingComponentError(f"{choice!r} not found under models/{FOLDER_KEY}")
    return resolve_file(file_key, choice)


MODEL_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt")


def list_files(key: str, suffixes: tuple[str, ...] = MODEL_SUFFIXES) -> list[str]:
    """Files of a core model folder key (``text_encoders``, ``vae``, ...) with one of ``suffixes``."""
    folder_paths = _folder_paths()
    if folder_paths is None:
        return []
    return [name for name in folder_paths.get_filename_list(key) if name.lower().endswith(suffixes)]


def resolve_file(key: str, name: str) -> Path:
    folder_paths = _folder_paths()
    if folder_paths is None:
        raise MissingComponentError(f"{name!r}: ComfyUI's model folders are not available outside ComfyUI; "
                                    "call the library loaders with a path instead")
    return Path(folder_paths.get_full_path_or_raise(key, name))


def progress_callback(total: int):
    """A sampler progress callback driving ComfyUI's progress bar with a latent->RGB preview of the current x0
    (updating the bar is also what lets ComfyUI interrupt a run)."""
    try:
        import comfy.latent_formats
        import comfy.utils
    except ImportError:
        return None
    bar = comfy.utils.ProgressBar(total)
    formats = {space.channels: getattr(comfy.latent_formats, space.comfy_format)() for space in LATENT_SPACES}

    def callback(step: int, steps: int, x0) -> None:
        bar.update_absolute(step, steps, preview=_preview(x0, formats.get(x0.shape[1])))

    return callback


def _preview(x0, latent_format):
    """("JPEG", image, size) of the first latent frame of a normalised latent, with core's RGB factors."""
    if latent_format is None or getattr(latent_format, "latent_rgb_factors", None) is None:
        return None
    import torch
    from PIL import Image

    factors = torch.tensor(latent_format.latent_rgb_factors, dtype=torch.float32, device=x0.device)
    bias = torch.tensor(latent_format.latent_rgb_factors_bias or [0.0] * 3, dtype=torch.float32, device=x0.device)
    rgb = torch.einsum("chw,cr->hwr", x0[0, :, 0].float(), factors) + bias
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).cpu().numpy()
    return "JPEG", Image.fromarray(pixels), 512


def free_gpu_memory() -> None:
    """Ask ComfyUI to unload its own models before ours take GPU memory (ours are not in its model manager)."""
    try:
        import comfy.model_management
    except ImportError:
        return
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


def interrupt_check():
    """A check the sampler calls before every model call: raises ComfyUI's interrupt exception when asked to stop."""
    try:
        import comfy.model_management
    except ImportError:
        return None

    def check() -> bool:
        comfy.model_management.throw_exception_if_processing_interrupted()
        return False

    return check


def torch_device():
    """ComfyUI's compute device, or CPU outside the host."""
    try:
        import comfy.model_management
    except ImportError:
        return "cpu"
    return comfy.model_management.get_torch_device()
