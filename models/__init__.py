"""Networks of Wan Express: the Wan DiT, umT5-XXL, CLIP ViT-H/14 vision tower and the Wan2.1 / Wan2.2 VAEs."""

from .clip_vision import ClipVisionConfig, ClipVisionEncoder
from .latent_spaces import LATENT_SPACES, WAN21_LATENT, WAN22_LATENT, LatentSpace, latent_space
from .t5 import T5Config, TextEncoder, UMT5Encoder
from .vae2_1 import WAN21_VAE, VaeConfig, WanVAE, WanVAE21
from .vae2_2 import WAN22_VAE, WanVAE22
from .wan_config import RELEASED_CONFIGS, WanConfig
from .wan_dit import WanDiT
from .wan_vace import WanVaceDiT

__all__ = [
    "LATENT_SPACES",
    "RELEASED_CONFIGS",
    "WAN21_LATENT",
    "WAN21_VAE",
    "WAN22_LATENT",
    "WAN22_VAE",
    "ClipVisionConfig",
    "ClipVisionEncoder",
    "LatentSpace",
    "T5Config",
    "TextEncoder",
    "UMT5Encoder",
    "VaeConfig",
    "WanConfig",
    "WanDiT",
    "WanVaceDiT",
    "WanVAE",
    "WanVAE21",
    "WanVAE22",
    "latent_space",
]
