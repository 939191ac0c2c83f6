"""Readers that turn files on disk into canonical (official-named) tensors and configs."""

from .clip_vision_loader import load_clip_vision
from .components import find_components
from .dit_loader import DitSource, load_dit, open_dit, open_dit_pair
from .inspector import inspect
from .lightx2v_config import read_lightx2v_config
from .safetensors_source import SafetensorsSource
from .text_encoder_loader import load_text_encoder
from .vae_loader import load_vae

__all__ = [
    "DitSource",
    "SafetensorsSource",
    "find_components",
    "inspect",
    "load_clip_vision",
    "load_dit",
    "load_text_encoder",
    "load_vae",
    "open_dit",
    "open_dit_pair",
    "read_lightx2v_config",
]
