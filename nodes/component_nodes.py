"""Nodes for the non-DiT parts: umT5 text encoder (load, encode), CLIP vision (load, encode), Wan VAE (load, decode).

Text embeddings leave as core ``CONDITIONING`` and latents travel as core ``LATENT`` (raw VAE space), so these
nodes mix with ComfyUI's own.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..loaders import find_components, load_clip_vision, load_text_encoder, load_vae
from ..models.latent_spaces import to_normalized
from . import host
from .values import DTYPES, TEXT_LEN, image_of



def _component(choice_path: Path, field: str) -> Path:
    """A model folder's component (found by official file name), or the chosen file itself."""
    return find_components(choice_path).require(field) if choice_path.is_dir() else choice_path


class WanExpressTextEncoderLoader:
    """Loads umT5-XXL from an official Wan folder (``.pth`` + ``google/umt5-xxl/``) or a text_encoders file."""

    CATEGORY = "Wan Express/loaders"
    DESCRIPTION = ("Load the umT5-XXL text encoder: pick an official model folder from models/wan_express/ (its "
                   "models_t5_umt5-xxl-enc-bf16.pth and google/umt5-xxl/ tokenizer are found by name), or a file "
                   "from models/text_encoders/ together with a folder that holds google/umt5-xxl/tokenizer.json.")
    RETURN_TYPES = ("WANEXPRESS_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (host.list_models("text_encoders"), {"tooltip": "Model folder (ends with /) or file."}),
                "quantization": (["auto", "fp8"], {"default": "auto", "tooltip": "fp8 quantizes the encoder's "
                                                   "linears per channel at load (half the memory)."}),
                "device": (["gpu", "cpu"], {"default": "gpu", "tooltip": "cpu keeps the 11 GB encoder off the GPU "
                                            "(slower prompts, more VRAM for the video model)."}),
            },
            "optional": {
                "tokenizer_folder": (["(from the model folder)"] + host.model_folders(), {
                    "tooltip": "For a text_encoders file: a model folder holding google/umt5-xxl/tokenizer.json."}),
            },
        }

    def load(self, model: str, quantization: str, device: str, tokenizer_folder: str = "(from the model folder)"):
        path = host.resolve_model("text_encoders", model)
        if path.is_dir():
            parts = find_components(path)
            path, tokenizer = parts.require("text_encoder"), parts.require("tokenizer")
        else:
            tokenizer = None
            if tokenizer_folder.endswith("/"):
                tokenizer = find_components(host.resolve_model("text_encoders", tokenizer_folder)).require(
                    "tokenizer")
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
            "text_encoder": ("WANEXPRESS_TEXT_ENCODER",),
            "text": ("STRING", {"multiline": True, "default": "", "tooltip": "The prompt."}),
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
            "model": (host.list_models("clip_vision"), {"tooltip": "Model folder (ends with /) or file."}),
        }}

    def load(self, model: str):
        path = _component(host.resolve_model("clip_vision", model), "clip_vision")
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
        return {"required": {"clip_vision": ("WANEXPRESS_CLIP_VISION",), "start_image": ("IMAGE",)},
                "optional": {"end_image": ("IMAGE",)}}

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
            "model": (host.list_models("vae"), {"tooltip": "Model folder (ends with /) or file."}),
            "dtype": (list(DTYPES), {"default": "bf16"}),
        }}

    def load(self, model: str, dtype: str):
        path = _component(host.resolve_model("vae", model), "vae")
        return (host.managed(load_vae(path, dtype=DTYPES[dtype]), "vae"),)


class WanExpressVAEDecode:
    """Decodes a Wan LATENT (raw VAE space, as core's) to frames, tiled above 832x480."""

    CATEGORY = "Wan Express/latent"
    DESCRIPTION = "Decode a Wan latent to video frames (causal, chunked; tiled with blended seams at large sizes)."
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("WANEXPRESS_VAE",), "samples": ("LATENT",)}}

    def decode(self, vae, samples: dict):
        host.bring(vae)
        video = vae.decode(to_normalized(samples["samples"]))  # [B, 3, F, H, W] in [-1, 1]
        frames = video.permute(0, 2, 3, 4, 1).flatten(0, 1)  # [B*F, H, W, 3]
        return (((frames + 1) / 2).clamp(0, 1).float().cpu(),)
