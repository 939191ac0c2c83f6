"""Readers that turn files on disk into canonical (official-named) tensors and configs."""

from .dit_loader import load_dit
from .safetensors_source import SafetensorsSource

__all__ = ["SafetensorsSource", "load_dit"]
