"""Nodes for the non-DiT parts: umT5 text encoder (load, encode), CLIP vision (load, encode), Wan VAE (load,
encode, decode).

Text embeddings leave as core ``CONDITIONING`` and latents travel as core ``LATENT`` (raw VAE space), so these
nodes mix with ComfyUI's own. VAE runs drive ComfyUI's progress bar chunk by chunk and stop when the user cancels.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import MissingComponentError, ModelFormatError
from ..loaders import find_components, load_clip_vision, load_text_encoder, load_vae
from ..loaders.components import TOKENIZER_DIR, TOKENIZER_FILE
from ..loaders.files.json_files import contained_path
from ..models.latent_spaces import to_normalized, to_raw
from ..sampling.failures import guarded
from . import host
from .values import DTYPES, TEXT_LEN, image_of

# The tokenizer choice that means: the one embedded in a ComfyUI umT5 file (``spiece_model``), or the official
# folder's google/umt5-xxl/.
TOKENIZER_DEFAULT = "(from the file or model folder)"
TILE_MODES = ("auto", "on", "off")


def _checked(choice: object) -> str:
    """A model widget's value, refused (as a pack error) unless it is a name inside a models folder: workflows are
    shared, so the value is as untrusted as a name read from a file (no ``..``, absolute paths, NUL, over-long)."""
    if not isinstance(choice, str):
        raise ModelFormatError(f"the model choice is a {type(choice).__name__}, not a file or folder name")
    contained_path("models", choice.rstrip("/"), "the workflow", what="model")
    return choice


def _component(choice_path: Path, field: str) -> Path:
    """A model folder's component (found by official file name), or the chosen file itself."""
    return find_components(choice_path).require(field) if choice_path.is_dir() else choice_path


def _tokenizer_roots() -> list[Path]:
    """models/text_encoders/ and models/wan_express/ folders, where tokenizer folders are looked for."""
    folder_paths = host._folder_paths()
    if folder_paths is None:
        return []
    roots = [Path(root) for key in ("text_encoders", host.FOLDER_KEY) for root in folder_paths.get_folder_paths(key)]
    return [root for root in roots if root.is_dir()]


def tokenizer_folders() -> list[str]:
    """Folders directly under a tokenizer root holding google/umt5-xxl/tokenizer.json (``name/``); a root holding
    google/umt5-xxl/ itself is listed as ``google/umt5-xxl/``."""
    found = []
    for root in _tokenizer_roots():
        if (root / TOKENIZER_DIR / TOKENIZER_FILE).is_file():
            found.append(f"{TOKENIZER_DIR}/")
        found += [f"{child.name}/" for child in sorted(root.iterdir())
                  if child.is_dir() and (child / TOKENIZER_DIR / TOKENIZER_FILE).is_file()]
    return list(dict.fromkeys(found))


def _resolve_tokenizer(choice: str) -> Path:
    """The folder holding tokenizer.json for a `tokenizer_folders` choice."""
    for root in _tokenizer_roots():
        for folder in (root / choice, root / choice / TOKENIZER_DIR):
            if (folder / TOKENIZER_FILE).is_file():
                return folder
    raise MissingComponentError(f"tokenizer folder {choice!r} not found (looked for {TOKENIZER_DIR}/{TOKENIZER_FILE} "
                                f"in it under models/text_encoders and models/{host.FOLDER_KEY})")


def _vae_dtype(choice: str) -> torch.dtype:
    """The VAE dtype of a choice; auto: bf16 where ComfyUI computes on a GPU, fp32 on a CPU (bf16 is slow there)."""
    if choice == "auto":
        return torch.float32 if torch.device(host.torch_device()).type == "cpu" else torch.bfloat16
    return DTYPES[choice]


class WanExpressTextEncoderLoader:
    """Loads umT5-XXL from an official Wan folder (``.pth`` + ``google/umt5-xxl/``) or a text_encoders file."""

    CATEGORY = "Wan Express/loaders"
    DESCRIPTION = ("Load the umT5-XXL text encoder: pick an official model folder from models/wan_express/ (its "
                   "models_t5_umt5-xxl-enc-bf16.pth and google/umt5-xxl/ tokenizer are found by name), or a file "
                   "from models/text_encoders/: ComfyUI's umt5_xxl files carry their tokenizer inside; for other "
                   "files pick a tokenizer_folder that holds google/umt5-xxl/tokenizer.json.")
    RETURN_TYPES = ("WANEXPRESS_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (host.list_models("text_encoders"), {
                    "tooltip": "An official model folder from models/wan_express/ (ends with /) or a umT5 file "
                               "from models/text_encoders/ (e.g. umt5_xxl_fp8_e4m3fn_scaled.safetensors)."}),
                "quantization": (["auto", "fp8"], {"default": "auto", "tooltip": "fp8 quantizes the encoder's "
                                                   "linears per channel at load (half the memory)."}),
                "device": (["gpu", "cpu"], {"default": "gpu", "tooltip": "cpu keeps the 11 GB encoder off the GPU "
                                            "(slower prompts, more VRAM for the video model)."}),
            },
            "optional": {
                "tokenizer_folder": ([TOKENIZER_DEFAULT] + tokenizer_folders(), {
                    "default": TOKENIZER_DEFAULT,
                    "tooltip": f"{TOKENIZER_DEFAULT}: the tokenizer inside a ComfyUI umT5 file, or the model "
                               "folder's google/umt5-xxl/. Otherwise a folder under models/text_encoders/ or "
                               "models/wan_express/ holding google/umt5-xxl/tokenizer.json, for a file that carries "
                               "no tokenizer."}),
            },
        }

    def load(self, model: str, quantization: str, device: str, tokenizer_folder: str = TOKENIZER_DEFAULT):
        path = host.resolve_model("text_encoders", _checked(model))
        if path.is_dir():
            parts = find_components(path)
            path, tokenizer = parts.require("text_encoder"), parts.require("tokenizer")
        else:  # None: the file's own spiece_model, else google/umt5-xxl/ beside it
            tokenizer = (None if tokenizer_folder == TOKENIZER_DEFAULT
                         else _resolve_tokenizer(_checked(tokenizer_folder)))
        encoder = load_text_encoder(path, tokenizer, device="cpu", quantization=quantization)
        if device == "gpu":  # waits in CPU memory; ComfyUI's memory manager brings it in for each encode
            host.managed(encoder.model, "text_encoder")
        return (encoder,)


class WanExpressTextEncode:
    """Encodes a prompt with umT5 (official cleaning and padding) into core CONDITIONING."""

    CATEGORY = "Wan Express/conditioning"
    DESCRIPTION = ("Encode a prompt the official way (ftfy cleaning, 512 tokens, zero padding). The output is "
                   "ComfyUI CONDITIONING, usable by the Wan Express sampler and by core nodes.")
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("WANEXPRESS_TEXT_ENCODER", {"tooltip": "From the Wan Express Text Encoder Loader."}),
            "text": ("STRING", {"multiline": True, "default": "", "tooltip": "The prompt (at most 512 tokens)."}),
        }}

    def encode(self, text_encoder, text: str):
        host.bring(text_encoder.model)
        context = text_encoder.encode([text])[0].float().cpu()
        return ([[F.pad(context, (0, 0, 0, TEXT_LEN - context.shape[0]))[None], {}]],)


class ClipVisionOutput:
    """What core's CLIP_VISION_OUTPUT carries for Wan: ``penultimate_hidden_states`` [1, 257·n, 1280]."""

    def __init__(self, penultimate_hidden_states: torch.Tensor):
        self.penultimate_hidden_states = penultimate_hidden_states

    def __getitem__(self, key: str):
        return getattr(self, key)


class WanExpressCLIPVisionLoader:
    """Loads CLIP ViT-H/14 (Wan2.1 I2V / FLF2V) from an official folder or a clip_vision file."""

    CATEGORY = "Wan Express/loaders"
    DESCRIPTION = ("Load the CLIP vision tower of Wan2.1 I2V / FLF2V: the official "
                   "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth from a folder in models/wan_express/, or "
                   "clip_vision_h.safetensors from models/clip_vision/.")
    RETURN_TYPES = ("WANEXPRESS_CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (host.list_models("clip_vision"), {
                "tooltip": "An official Wan2.1 I2V/FLF2V folder from models/wan_express/ (ends with /) or "
                           "clip_vision_h.safetensors from models/clip_vision/."}),
        }}

    def load(self, model: str):
        path = _component(host.resolve_model("clip_vision", _checked(model)), "clip_vision")
        return (host.managed(load_clip_vision(path), "text_encoder"),)


class WanExpressCLIPVisionEncode:
    """Encodes the start image (and the end image, for FLF2V) the official way: 224x224 squash, no crop."""

    CATEGORY = "Wan Express/conditioning"
    DESCRIPTION = ("CLIP features for Wan2.1 I2V (start image: 257 tokens) and FLF2V (start + end: 514 tokens), "
                   "preprocessed as the official code (bicubic 224x224, no crop). Feeds the sampler's "
                   "clip_vision_output.")
    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
                    "clip_vision": ("WANEXPRESS_CLIP_VISION", {"tooltip": "From the Wan Express CLIP Vision Loader."}),
                    "start_image": ("IMAGE", {"tooltip": "The first frame of the video (its first image is used)."}),
                },
                "optional": {
                    "end_image": ("IMAGE", {"tooltip": "FLF2V only: the last frame (its last image is used)."}),
                }}

    def encode(self, clip_vision, start_image: torch.Tensor, end_image: torch.Tensor | None = None):
        host.bring(clip_vision)
        frames = [image_of(start_image, 0)] + ([] if end_image is None else [image_of(end_image, -1)])
        tokens = clip_vision.encode(torch.stack(frames)).float().cpu()  # [n, 257, 1280]; it moves its input
        return (ClipVisionOutput(tokens.reshape(1, -1, tokens.shape[-1])),)


class WanExpressVAELoader:
    """Loads a Wan2.1 or Wan2.2 VAE from an official folder or a vae file (``.pth`` or ComfyUI safetensors)."""

    CATEGORY = "Wan Express/loaders"
    DESCRIPTION = ("Load Wan2.1_VAE.pth / Wan2.2_VAE.pth from an official folder in models/wan_express/, or a VAE "
                   "file from models/vae/ (official .pth or ComfyUI wan_2.1_vae / wan2.2_vae safetensors).")
    RETURN_TYPES = ("WANEXPRESS_VAE",)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (host.list_models("vae"), {
                "tooltip": "An official folder from models/wan_express/ (ends with /) or a VAE file from "
                           "models/vae/: Wan2.1 VAE for every model but TI2V-5B, which needs the Wan2.2 VAE."}),
            "dtype": (["auto", *DTYPES], {
                "default": "auto",
                "tooltip": "auto: bf16 on a GPU, fp32 when ComfyUI runs on the CPU. fp32 is exact and twice the "
                           "memory."}),
        }}

    def load(self, model: str, dtype: str):
        path = _component(host.resolve_model("vae", _checked(model)), "vae")
        return (host.managed(load_vae(path, dtype=_vae_dtype(dtype)), "vae"),)


class WanExpressVAEEncode:
    """Encodes frames (core IMAGE) to a Wan LATENT in raw VAE space, as core's VAE Encode does."""

    CATEGORY = "Wan Express/latent"
    DESCRIPTION = ("Encode video frames to a Wan latent (causal, chunked): 1 + 4k frames (1, 5, 9, ..., 81), sides "
                   "multiples of 8 (Wan2.1 VAE) or 16 (Wan2.2 VAE). The LATENT works with core nodes too.")
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("WANEXPRESS_VAE", {"tooltip": "From the Wan Express VAE Loader."}),
            "images": ("IMAGE", {"tooltip": "The frames in order, as one batch: 1 + 4k of them (1, 5, 9, ... 81)."}),
        }}

    def encode(self, vae, images: torch.Tensor):
        host.bring(vae)
        video = images[..., :3].permute(3, 0, 1, 2)[None].float() * 2 - 1  # [1, 3, N, H, W] in [-1, 1]
        latent = guarded("encoding with the VAE", vae.encode, video, progress=host.progress_bar(),
                         interrupt=host.interrupt_check())
        return ({"samples": to_raw(latent).cpu()},)


class WanExpressVAEDecode:
    """Decodes a Wan LATENT (raw VAE space, as core's) to frames, tiled above 832x480 unless told otherwise."""

    CATEGORY = "Wan Express/latent"
    DESCRIPTION = ("Decode a Wan latent to video frames (causal, chunked; tiled with blended seams at large sizes, "
                   "which bounds the memory a 720p decode needs).")
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("WANEXPRESS_VAE", {"tooltip": "From the Wan Express VAE Loader."}),
                "samples": ("LATENT", {"tooltip": "A Wan latent (from a sampler or a VAE Encode)."}),
            },
            "optional": {
                "tiled": (list(TILE_MODES), {
                    "default": "auto",
                    "tooltip": "Decode in overlapping tiles: less memory, faint seams possible. auto tiles frames "
                               "larger than 832x480."}),
                "tile": ("INT", {
                    "default": 512, "min": 128, "max": 4096, "step": 32,
                    "tooltip": "Tile side in pixels when tiled (neighbouring tiles share 64 pixels). Smaller tiles "
                               "need less memory."}),
            },
        }

    def decode(self, vae, samples: dict, tiled: str = "auto", tile: int = 512):
        host.bring(vae)
        video = guarded("decoding with the VAE (tiled 'on' with a smaller tile needs less)", vae.decode,
                        to_normalized(samples["samples"]), tiled={"auto": None, "on": True, "off": False}[tiled],
                        tile=max(1, tile // vae.stride[1]), progress=host.progress_bar(),
                        interrupt=host.interrupt_check())  # [B, 3, F, H, W] in [-1, 1]
        frames = video.permute(0, 2, 3, 4, 1).flatten(0, 1)  # [B*F, H, W, 3]
        return (((frames + 1) / 2).clamp(0, 1).float().cpu(),)
