"""ComfyUI node classes (V1 API: ``NODE_CLASS_MAPPINGS``; never also a V3 ``comfy_entrypoint``)."""

from .dit_loader_node import WanExpressDiTLoader

NODE_CLASS_MAPPINGS = {
    "WanExpressDiTLoader": WanExpressDiTLoader,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "WanExpressDiTLoader": "Wan Express DiT Loader",
}
