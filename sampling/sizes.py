"""Frame-count rule and output sizes of the official pipelines (spec sampling.md §6.1, §7.2, §10).

Entry points: `latent_frames(frames)` (enforces 1 + 4k), `i2v_latent_size(height, width, max_area)` (Wan2.1/2.2
I2V and FLF2V: area and aspect, including the official floating-point quirk) and `ti2v_output_size(width, height,
max_area)` (TI2V-5B: multiples of 32 closest in aspect).
"""

from __future__ import annotations

import math

from ..errors import InvalidInputError

# The DiT patchifies 2x2 latent pixels: latent height and width must be even.
PATCH = 2


def latent_frames(frames: int, temporal_stride: int = 4) -> int:
    """Latent frames `(F − 1)/4 + 1` for a pixel frame count `F = 1 + 4k`; other counts raise."""
    if int(frames) != frames or frames < 1 or (frames - 1) % temporal_stride:
        lower = max(1, (int(frames) - 1) // temporal_stride * temporal_stride + 1)
        raise InvalidInputError(
            f"frame count {frames} is not 1 + {temporal_stride}k (the VAE compresses {temporal_stride} frames into one "
            f"latent frame after the first); use {lower} or {lower + temporal_stride} frames")
    return (int(frames) - 1) // temporal_stride + 1


def check_pixel_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """Latent (height, width) for a pixel size that is a multiple of `stride·2`; other sizes raise."""
    multiple = stride * PATCH
    if height < multiple or width < multiple or height % multiple or width % multiple:
        raise InvalidInputError(
            f"video size {width}x{height} must be a multiple of {multiple} in both directions (VAE stride {stride} "
            f"times patch {PATCH}); e.g. {max(multiple, width // multiple * multiple)}x"
            f"{max(multiple, height // multiple * multiple)}")
    return height // stride, width // stride


def i2v_latent_size(height: int, width: int, max_area: int, stride: int = 8) -> tuple[int, int]:
    """(lat_h, lat_w) for an image of `height`x`width` pixels and a target area (official I2V/FLF2V rule).

    `round(sqrt(max_area·ar) // stride // 2 · 2)` with float floor division, ar = height/width; an 832x480 image at
    480p therefore gives 58x104 latents (464x832 pixels), exactly as the official code and LightX2V.
    """
    if height <= 0 or width <= 0 or max_area <= 0:
        raise InvalidInputError(f"image size {width}x{height} and max_area {max_area} must be positive")
    aspect = height / width
    lat_h = round(math.sqrt(max_area * aspect) // stride // PATCH * PATCH)
    lat_w = round(math.sqrt(max_area / aspect) // stride // PATCH * PATCH)
    if lat_h < PATCH or lat_w < PATCH:
        raise InvalidInputError(
            f"an image of {width}x{height} at max_area {max_area} gives a {lat_w}x{lat_h} latent; raise the area")
    return lat_h, lat_w


def ti2v_output_size(width: int, height: int, max_area: int, multiple: int = 32) -> tuple[int, int]:
    """(width, height) in multiples of `multiple` with area ≤ max_area, closest to the image aspect (TI2V-5B).

    Two candidates, width rounded down first or height first; the one whose aspect ratio is nearer wins, the
    height-first one on a tie.
    """
    ratio = width / height
    float_w = math.sqrt(max_area * ratio)
    float_h = max_area / float_w
    w1 = int(float_w // multiple * multiple)
    h1 = int(max_area / w1 // multiple * multiple) if w1 else 0
    h2 = int(float_h // multiple * multiple)
    w2 = int(max_area / h2 // multiple * multiple) if h2 else 0
    if min(w1, h1, w2, h2) <= 0:
        raise InvalidInputError(f"max_area {max_area} is too small for a {width}x{height} image in steps of {multiple}")

    def mismatch(w: int, h: int) -> float:
        return max(ratio / (w / h), (w / h) / ratio)

    return (w1, h1) if mismatch(w1, h1) < mismatch(w2, h2) else (w2, h2)
