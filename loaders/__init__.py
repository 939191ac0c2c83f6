"""Readers that turn files on disk into canonical (official-named) tensors and configs."""

from .clip_vision import load_clip_vision
from .components import find_components
from .dit.lightx2v_config import read_lightx2v_config
from .dit.loader import DitSource, load_dit, load_planned, open_dit, open_dit_pair
from .dit.plan import DitPlan, plan_dit
from .files.source import SafetensorsSource
from .inspector import inspect
from .text_encoder import load_text_encoder
from .vae import load_vae

__all__ = [
    "DitPlan",
    "DitSource",
    "SafetensorsSource",
    "find_components",
    "inspect",
    "load_clip_vision",
    "load_dit",
    "load_planned",
    "load_text_encoder",
    "load_vae",
    "open_dit",
    "open_dit_pair",
    "plan_dit",
    "read_lightx2v_config",
]
