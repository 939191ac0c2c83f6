"""ComfyUI node classes (V1 API: ``NODE_CLASS_MAPPINGS``; never also a V3 ``comfy_entrypoint``)."""

import functools

from ..errors import WanExpressError
from . import host

from .component_nodes import (WanExpressCLIPVisionEncode, WanExpressCLIPVisionLoader, WanExpressTextEncode,
                              WanExpressTextEncoderLoader, WanExpressVAEDecode, WanExpressVAEEncode,
                              WanExpressVAELoader)
from .dit_loader_node import WanExpressDiTLoader
from .lora_node import WanExpressLoRA
from .sampler_node import WanExpressSampler
from .tool_nodes import WanExpressConvert, WanExpressInspect
from .vace_node import WanExpressVaceConditioning

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
    "WanExpressVAEEncode": WanExpressVAEEncode,
    "WanExpressInspect": WanExpressInspect,
    "WanExpressConvert": WanExpressConvert,
    "WanExpressVaceConditioning": WanExpressVaceConditioning,
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
    "WanExpressVAEEncode": "Wan Express VAE Encode",
    "WanExpressInspect": "Wan Express Inspect Model",
    "WanExpressConvert": "Wan Express Convert / Export Model",
    "WanExpressVaceConditioning": "Wan Express VACE Conditioning",
}


def _in_users_words(function):
    """The node's function with the pack's errors naming model files as ``models/<folder>/...``."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except WanExpressError as error:  # shown as its sentence: the frames below say nothing to a user
            error.args = (host.user_paths(str(error)), *error.args[1:])
            raise error.with_traceback(None) from None
    return run


for _node in NODE_CLASS_MAPPINGS.values():
    setattr(_node, _node.FUNCTION, _in_users_words(getattr(_node, _node.FUNCTION)))

