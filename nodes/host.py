"""The only bridge to ComfyUI's modules; everything degrades to empty lists outside the host."""

from __future__ import annotations

import weakref
from pathlib import Path

from ..errors import InvalidInputError, MissingComponentError, ModelFormatError, WanExpressError
from ..loaders.dit.folders import candidates, pair_folders, resolve
from ..loaders.files.json_files import contained_path
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


def user_paths(text: str) -> str:
    """``text`` with the absolute paths of ComfyUI's model folders written as ``models/<folder>``, as users know
    them (longest first, so a folder inside another keeps its own name)."""
    folder_paths = _folder_paths()
    if folder_paths is None:
        return text
    roots = [(str(Path(path)), f"models/{key}") for key, (paths, _) in folder_paths.folder_names_and_paths.items()
             for path in paths]
    roots.append((str(Path(folder_paths.models_dir)), "models"))
    for root, shown in sorted(roots, key=lambda pair: -len(pair[0])):
        text = text.replace(root + "/", shown + "/").replace(root, shown)
    return text


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
        return model_choice(_roots(), choice)
    return resolve_file(file_key, choice)


def model_choice(roots: list[Path], choice: str) -> Path:
    """A ``name/`` folder or ``name.json`` config under the first of ``roots`` that has it. The choice is a name
    inside ``models/wan_express`` (a workflow may carry any text): absolute names and ``..`` are refused."""
    shown_choice = choice if len(choice) <= 80 else choice[:80] + "..."
    try:
        candidates = [contained_path(root, choice.rstrip("/"), root, "model") for root in roots]
    except ModelFormatError:
        raise InvalidInputError(f"{shown_choice!r} is not a model folder or config inside models/{FOLDER_KEY}; "
                                "pick one from the list") from None
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise MissingComponentError(f"{shown_choice!r} not found under models/{FOLDER_KEY}")


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


def _management():
    try:
        import comfy.model_management
    except ImportError:
        return None
    return comfy.model_management


def load_models(models, latent_shape) -> None:
    """Bring core MODELs onto the compute device through ComfyUI's memory manager (which offloads other models as
    needed and applies LoRA patches), reserving activation memory for a CFG batch of ``latent_shape`` [C, T, H, W]."""
    management = _management()
    if management is None:
        return
    required = sum(model.memory_required([2, *latent_shape]) for model in models)
    minimum = sum(model.memory_required([1, *latent_shape]) for model in models)
    management.load_models_gpu(list(models), memory_required=required, minimum_memory_required=minimum)


def unload_model(model) -> None:
    """Give a core MODEL's GPU memory back now (the idle Wan2.2 expert), leaving it loadable again."""
    management = _management()
    if management is None:
        return
    for loaded in list(management.current_loaded_models):
        if loaded.model is model:
            loaded.model_unload()
            management.current_loaded_models.remove(loaded)


# Our encoders and VAEs under ComfyUI's memory manager: module -> the core ModelPatcher that moves it.
_MANAGED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def managed(module, offload: str = "unet"):
    """Put a network (umT5, CLIP vision, VAE) under ComfyUI's memory manager: it waits on ``offload``'s device
    (``text_encoder``, ``vae`` or ``unet`` in core's terms) and `bring` loads it when a node runs it, so it shares
    VRAM with the diffusion models under core's policy. Returns ``module``."""
    management = _management()
    if management is None:
        return module
    import comfy.model_patcher

    device = getattr(management, f"{offload}_offload_device")()
    module.to(device)
    _MANAGED[module] = comfy.model_patcher.ModelPatcher(module, load_device=management.get_torch_device(),
                                                       offload_device=device)
    return module


def bring(module, memory_required: int = 0) -> None:
    """Load a `managed` network onto the compute device before it runs (ComfyUI frees memory for it first)."""
    management = _management()
    patcher = _MANAGED.get(module)
    if management is None or patcher is None:
        return
    management.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)


def offload_device():
    """Where ComfyUI keeps diffusion models it is not running (CPU unless --highvram / --gpu-only)."""
    management = _management()
    return "cpu" if management is None else management.unet_offload_device()


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
    management = _management()
    return "cpu" if management is None else management.get_torch_device()


def folder_model_choices() -> list[str]:
    """Names for a loader's ``file`` input: the models of every ``models/wan_express`` folder that holds several
    (files, and subfolders as ``name/``), and the expert subfolders of Wan2.2 A14B folders (one expert alone)."""
    names: list[str] = []
    for root in _roots():
        for folder in sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith(".")):
            experts = pair_folders(folder)
            if experts is not None:
                names += [f"{expert.name}/" for expert in experts]
                continue
            try:
                resolve(folder)
                continue  # one model: nothing to choose
            except ModelFormatError:
                found = candidates(folder)
            except WanExpressError:
                continue  # nothing loadable; the loader's error says why when it is picked
            if len(found) > 1:
                names += [f"{path.name}/" if path.is_dir() else path.name for path in found]
    return list(dict.fromkeys(names))


def output_folder(key: str) -> Path:
    """The folder ComfyUI names ``models/<key>`` (core's own, among the paths listed for ``key``), created if
    missing; where the pack writes files of that kind (exports into ``diffusion_models``)."""
    folder_paths = _folder_paths()
    if folder_paths is None:
        raise MissingComponentError(f"models/{key}: ComfyUI's model folders are not available outside ComfyUI")
    paths = [Path(path) for path in folder_paths.get_folder_paths(key)]
    if not paths:
        raise MissingComponentError(f"ComfyUI lists no folder for models/{key}")
    folder = next((path for path in paths if path.name == key), paths[0])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def progress_bar(check_interrupt: bool = False):
    """A ``progress(done, total)`` driving ComfyUI's progress bar of the running node (VAE chunks, exported tensors);
    with ``check_interrupt`` it also raises ComfyUI's interrupt exception when the user cancels. None outside the
    host."""
    try:
        import comfy.model_management
        import comfy.utils
    except ImportError:
        return None
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if check_interrupt:
            comfy.model_management.throw_exception_if_processing_interrupted()
        if bar is None:
            bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)

    return progress
