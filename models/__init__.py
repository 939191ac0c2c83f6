"""Networks of Wan Express: the Wan DiT (encoders and VAEs join here)."""

from .wan_config import RELEASED_CONFIGS, WanConfig
from .wan_dit import WanDiT

__all__ = ["RELEASED_CONFIGS", "WanConfig", "WanDiT"]
