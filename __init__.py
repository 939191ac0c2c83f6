"""Wan Express: load every Wan2.1 / Wan2.2 model layout and run it fast, as ComfyUI nodes.

Importing the package needs no ComfyUI; inside the host it also registers the ``models/wan_express`` folder.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.host import register_model_folders

__version__ = "0.1.0"
# The front-end extension that shows the Inspect / Convert / LoRA reports on their nodes.
WEB_DIRECTORY = "./web"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

register_model_folders()
