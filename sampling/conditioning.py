"""Conditioning for every task: T2V, Wan2.1 I2V (mask + VAE latent as `y`, CLIP), FLF2V, Wan2.2 I2V-A14B (no CLIP)
and TI2V-5B (first latent frame replaced by the image latent, per-token timestep 0 there).

Entry points build a `Conditioning`: `text_to_video`, `image_to_video`, `first_last_to_video`, `ti2v_image_to_video`.
They take text contexts as tensors (the text encoder runs elsewhere) and a VAE object with `encode(video
[B, 3, F, H, W] in [-1, 1]) -> [B, z, T, H/s, W/s]`, `z_dim` and `stride`. Formulas: spec sampling.md §6, §7.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..models.latent_spaces import WAN21_LATENT
from .schedules import BOUNDARY_I2V, BOUNDARY_T2V
from .sizes import PATCH, check_pixel_size, i2v_latent_size, latent_frames, ti2v_output_size

# Official default target areas: 480p / 720p for I2V and FLF2V, 704x1280 for TI2V-5B.
AREA_480P = 480 * 832
AREA_720P = 720 * 1280
AREA_TI2V = 704 * 1280


@dataclasses.dataclass
class Conditioning:
    """Everything the sampler needs besides the models and the schedule.

    Attributes:
        context: [1, L <= 512, text_dim] positive text embedding.
        latent_shape: (C, T, H, W) of the latent to generate.
        negative_context: [1, L, text_dim] negative text embedding; needed when CFG is on.
        y: [1, 4 + z, T, H, W] mask and image latent concatenated after the noisy latent (I2V, FLF2V).
        clip_fea: [1, 257, 1280] (FLF2V: [1, 514, 1280]) CLIP features, Wan2.1 image models only.
        first_latent: [1, C, 1, H, W] clean image latent that replaces latent frame 0 (TI2V-5B image mode).
        vace_context: [1, 96, T, H, W] Wan2.1 VACE context (`sampling.vace`), in both CFG branches.
        vace_strength: the VACE hint scale.
    """

    context: torch.Tensor
    latent_shape: tuple[int, int, int, int]
    negative_context: torch.Tensor | None = None
    y: torch.Tensor | None = None
    clip_fea: torch.Tensor | None = None
    first_latent: torch.Tensor | None = None
    vace_context: torch.Tensor | None = None
    vace_strength: float = 1.0

    def __post_init__(self) -> None:
        for name in ("context", "negative_context"):
            tensor = getattr(self, name)
            if tensor is not None and (tensor.dim() != 3 or tensor.shape[0] != 1):
                raise InvalidInputError(f"{name} must be [1, tokens, text_dim], got {tuple(tensor.shape)}")
        if self.first_latent is not None and tuple(self.first_latent.shape) != (1, self.latent_shape[0], 1,
                                                                                *self.latent_shape[2:]):
            raise InvalidInputError(f"first_latent {tuple(self.first_latent.shape)} does not match latent "
                                    f"{self.latent_shape}")

    @property
    def default_boundary(self) -> float:
        """Wan2.2 A14B expert boundary: 0.900 with image conditioning, 0.875 for text only."""
        return BOUNDARY_I2V if self.y is not None else BOUNDARY_T2V

    def token_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """DiT timestep for step time `t` ([1]): [1] normally; TI2V image mode: [1, S] with 0 on frame-0 tokens."""
        if self.first_latent is None:
            return t
        return token_timesteps(t, self.latent_shape)

    def reimpose(self, latent: torch.Tensor) -> torch.Tensor:
        """TI2V image mode: put the clean image latent back into frame 0 (after the noise and after every step)."""
        if self.first_latent is None:
            return latent
        return torch.cat([self.first_latent.to(latent), latent[:, :, 1:]], dim=2)


def token_timesteps(t: torch.Tensor, latent_shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Per-token timesteps of TI2V image mode: [1, T·(H/2)·(W/2)] float32, 0 for latent frame 0, `t` elsewhere.

    Token order is the DiT's row-major (frame, row, column) patch order.
    """
    _, frames, height, width = latent_shape
    per_frame = torch.ones(frames, dtype=torch.float32, device=t.device)
    per_frame[0] = 0
    tokens = per_frame[:, None].expand(frames, (height // PATCH) * (width // PATCH)).flatten()
    return (tokens * t.to(torch.float32).reshape(())).unsqueeze(0)


def frame_mask(frames: int, lat_h: int, lat_w: int, *, last_frame: bool = False) -> torch.Tensor:
    """The 4-channel image mask in latent time: [4, T, lat_h, lat_w] float32.

    Per pixel frame: 1 for the given frames (the first; FLF2V also the last), 0 elsewhere; the first frame is
    repeated four times so that F + 3 = 4T values fold into 4 channels per latent frame.
    """
    latent_t = latent_frames(frames)
    per_frame = torch.zeros(frames + 3)
    per_frame[:4] = 1
    if last_frame:
        per_frame[-1] = 1
    mask = per_frame.view(latent_t, 4).t()
    return mask[:, :, None, None].expand(4, latent_t, lat_h, lat_w).contiguous()


def _check_image(image: torch.Tensor, name: str) -> torch.Tensor:
    if image.dim() != 3 or image.shape[0] != 3:
        raise InvalidInputError(f"{name} must be an RGB tensor [3, H, W] in [-1, 1], got {tuple(image.shape)}")
    return image.float().cpu()


def _bicubic(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[3, H0, W0] -> [3, 1, height, width]: bicubic on CPU in fp32, no antialias, no clamp (official)."""
    return F.interpolate(image[None], size=(height, width), mode="bicubic")[0][:, None]


def _encode_with_mask(vae, video: torch.Tensor, frames: int, *, last_frame: bool) -> torch.Tensor:
    """VAE latent of `video` [3, F, h, w] with the 4-channel mask in front: y [1, 4 + z, T, lat_h, lat_w]."""
    latent = vae.encode(video[None])  # the VAE moves its input to its own device
    mask = frame_mask(frames, latent.shape[3], latent.shape[4], last_frame=last_frame)
    return torch.cat([mask[None].to(latent), latent], dim=1)


def text_to_video(context: torch.Tensor, *, width: int, height: int, frames: int,
                  z_dim: int = WAN21_LATENT.channels, stride: tuple[int, int, int] = WAN21_LATENT.stride,
                  negative_context: torch.Tensor | None = None) -> Conditioning:
    """Text-only conditioning (Wan2.1/2.2 T2V; TI2V-5B text mode with `WAN22_LATENT`'s channels and stride)."""
    latent_t = latent_frames(frames, stride[0])
    lat_h, lat_w = check_pixel_size(height, width, stride[1])
    return Conditioning(context, (z_dim, latent_t, lat_h, lat_w), negative_context)


def image_to_video(vae, image: torch.Tensor, context: torch.Tensor, *, frames: int = 81, max_area: int = AREA_480P,
                   clip_fea: torch.Tensor | None = None, negative_context: torch.Tensor | None = None) -> Conditioning:
    """I2V: Wan2.1 I2V-14B (pass `clip_fea` of the original image) or Wan2.2 I2V-A14B (no CLIP).

    The size comes from `max_area` and the image aspect (`i2v_latent_size`); the image is resized bicubically,
    followed by F − 1 zero (mid-grey) frames, VAE-encoded, and preceded by the first-frame mask.

    Args:
        image: [3, H0, W0] in [-1, 1].
    """
    image = _check_image(image, "image")
    latent_frames(frames, vae.stride[0])
    lat_h, lat_w = i2v_latent_size(image.shape[1], image.shape[2], max_area, vae.stride[1])
    height, width = lat_h * vae.stride[1], lat_w * vae.stride[2]
    video = torch.cat([_bicubic(image, height, width), torch.zeros(3, frames - 1, height, width)], dim=1)
    y = _encode_with_mask(vae, video, frames, last_frame=False)
    return Conditioning(context, (vae.z_dim, y.shape[2], lat_h, lat_w), negative_context, y=y, clip_fea=clip_fea)


def _crop_to_aspect(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre crop of [3, H, W] to the aspect ratio height:width (the largest such window)."""
    img_h, img_w = image.shape[1:]
    if img_h * width > img_w * height:
        crop_h, crop_w = round(img_w * height / width), img_w
    else:
        crop_h, crop_w = img_h, round(img_h * width / height)
    top, left = (img_h - crop_h) // 2, (img_w - crop_w) // 2
    return image[:, top:top + crop_h, left:left + crop_w]


def first_last_to_video(vae, first: torch.Tensor, last: torch.Tensor, context: torch.Tensor, *, frames: int = 81,
                        max_area: int = AREA_720P, clip_fea: torch.Tensor | None = None,
                        negative_context: torch.Tensor | None = None) -> Conditioning:
    """FLF2V (Wan2.1 FLF2V-14B): first and last frame; `clip_fea` [1, 514, 1280] holds both frames' CLIP tokens.

    The size follows the first frame. A last frame of another aspect is centre-cropped to the first frame's aspect
    before the bicubic resize (same-size frames, the usual case, are used as they are). The mask marks the first
    frame (latent frame 0, all channels) and the last (last latent frame, channel 3); the official code fixes
    F = 81 there, any 1 + 4k ≥ 5 works here.
    """
    first, last = _check_image(first, "first frame"), _check_image(last, "last frame")
    if latent_frames(frames, vae.stride[0]) < 2:
        raise InvalidInputError(f"first-last-frame video needs at least 5 frames, got {frames}")
    lat_h, lat_w = i2v_latent_size(first.shape[1], first.shape[2], max_area, vae.stride[1])
    height, width = lat_h * vae.stride[1], lat_w * vae.stride[2]
    if last.shape[1:] != first.shape[1:]:
        last = _crop_to_aspect(last, first.shape[1], first.shape[2])
    video = torch.cat([_bicubic(first, height, width), torch.zeros(3, frames - 2, height, width),
                       _bicubic(last, height, width)], dim=1)
    y = _encode_with_mask(vae, video, frames, last_frame=True)
    return Conditioning(context, (vae.z_dim, y.shape[2], lat_h, lat_w), negative_context, y=y, clip_fea=clip_fea)


def ti2v_preprocess(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """TI2V image preparation: LANCZOS resize to cover width x height, centre crop (official, through Pillow).

    Args:
        image: [3, H0, W0] in [-1, 1] (8-bit images round-trip exactly).
    Returns:
        [3, height, width] float32 in [-1, 1].
    """
    from PIL import Image  # Pillow ships with ComfyUI; only this path needs it

    image = _check_image(image, "image")
    pixels = ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels)
    img_w, img_h = picture.size
    scale = max(width / img_w, height / img_h)
    picture = picture.resize((round(img_w * scale), round(img_h * scale)), Image.LANCZOS)
    left, top = (picture.width - width) // 2, (picture.height - height) // 2
    picture = picture.crop((left, top, left + width, top + height))
    tensor = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return (tensor.permute(2, 0, 1).float() / 255 - 0.5) / 0.5


def ti2v_image_to_video(vae, image: torch.Tensor, context: torch.Tensor, *, frames: int = 121,
                        max_area: int = AREA_TI2V, negative_context: torch.Tensor | None = None) -> Conditioning:
    """TI2V-5B image mode: the size is the multiple of 32 closest to the image aspect within `max_area`
    (`ti2v_output_size`); the prepared image is VAE-encoded alone and replaces latent frame 0 throughout."""
    image = _check_image(image, "image")
    latent_t = latent_frames(frames, vae.stride[0])
    width, height = ti2v_output_size(image.shape[2], image.shape[1], max_area, vae.stride[1] * PATCH)
    pixels = ti2v_preprocess(image, width, height)
    first_latent = vae.encode(pixels[None, :, None])
    shape = (vae.z_dim, latent_t, height // vae.stride[1], width // vae.stride[2])
    return Conditioning(context, shape, negative_context, first_latent=first_latent)
