"""ComfyUI node classes (V1 API: ``NODE_CLASS_MAPPINGS``; never also a V3 ``comfy_entrypoint``)."""

from .component_nodes import (WanExpressCLIPVisionEncode, WanExpressCLIPVisionLoader, WanExpressTextEncode,
                              WanExpressTextEncoderLoader, WanExpressVAEDecode, WanExpressVAELoader)
from .dit_loader_node import WanExpressDiTLoader
from .lora_node import WanExpressLoRA
from .sampler_node import WanExpressSampler

NODE_CLASS_MAPPINGS = {
    "WanExpressDiTLoader": WanExpressDiTLoader,
    "WanExpressLoRA": WanExpressLoRA,
    "WanExpressTextEncoderLoader": WanExpressTextEncoderLoader,
    "WanExpressTextEncode": WanExpressTextEncode,
    "WanExpressCLIPVisionLoader": WanExpressCLIPVisionLoader,
    "WanExpressCLIPVisionEncode": WanExpressCLIPVisionEncode,
    "WanExpressVAELoader": WanExpressVAELoader,
    "WanExpressSampler": WanExpressSampler,
    "WanExpressVAEDecode": WanExpressVAEDecode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "WanExpressDiTLoader": "Wan Express DiT Loader",
    "WanExpressLoRA": "Wan Express LoRA",
    "WanExpressTextEncoderLoader": "Wan Express Text Encoder Loader (umT5)",
    "WanExpressTextEncode": "Wan Express Text Encode",
    "WanExpressCLIPVisionLoader": "Wan Express CLIP Vision Loader",
    "WanExpressCLIPVisionEncode": "Wan Express CLIP Vision Encode",
    "WanExpressVAELoader": "Wan Express VAE Loader",
    "WanExpressSampler": "Wan Express Sampler",
    "WanExpressVAEDecode": "Wan Express VAE Decode",
}
