"""Wan2.1 VACE conditioning as the official pipeline builds it: the VACE context and the frames to trim.

`vace_conditioning(encode, num_frames, height, width, frames=None, mask=None, reference_images=())` returns a
`VaceConditioning` whose ``context [1, 96, R + F', h, w]`` is the DiT's ``vace_context``:

- frames [3, F, H, W] in [-1, 1] (none: grey zeros) split by the binarised mask [F, H, W] (1 = generate; none: all
  ones) into ``inactive = frames * (1 - mask)`` and ``reactive = frames * mask``, each VAE-encoded (16 + 16 channels);
- the mask packed 8x8 spatially into 64 channels (channel ``8 * dy + dx`` holds pixel ``(8h + dy, 8w + dx)``) and
  resampled to the F' = (F + 3) // 4 latent frames (nearest-exact, as official);
- each reference image [3, H, W] encoded as one latent frame (plus 16 zero channels, a zero mask), prepended in the
  given order; the sampler's latent has R = len(reference_images) extra frames at the front, cut from the output.

`vace_to_video(context, vace, negative_context)` makes the sampler's `Conditioning`; `trim_references(latent, vace)`
cuts the reference frames from the sampled latent before decoding.

``encode`` is the Wan2.1 VAE's normalised encoder: [3, F, H, W] in [-1, 1] -> [16, (F + 3) // 4, H / 8, W / 8].
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from .conditioning import Conditioning

SPATIAL, TEMPORAL = 8, 4
# Pixel sizes must be whole patches of latent pixels: 8 (VAE) x 2 (DiT patch).
SIZE_MULTIPLE = 16


@dataclasses.dataclass(frozen=True)
class VaceConditioning:
    """context: [1, 96, R + F', h, w] VACE context; trim: R reference frames to drop from the sampled latent;
    strength: the hint scale (official ``context_scale``)."""

    context: torch.Tensor
    trim: int
    strength: float = 1.0

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """[16, R + F', h, w]: the latent the sampler must start from."""
        _, _, frames, height, width = self.context.shape
        return 16, frames, height, width


def check_size(num_frames: int, height: int, width: int) -> None:
    """Raise `InvalidInputError` unless F = 4k + 1 and H, W are multiples of 16."""
    if num_frames < 1 or (num_frames - 1) % TEMPORAL:
        raise InvalidInputError(f"VACE needs 4k+1 frames (1, 5, ..., 81); got {num_frames}")
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height <= 0 or width <= 0:
        raise InvalidInputError(f"VACE needs a width and height that are multiples of {SIZE_MULTIPLE}; "
                                f"got {width}x{height}")


def mask_channels(mask: torch.Tensor, references: int = 0) -> torch.Tensor:
    """mask [F, H, W] (values in [0, 1]) -> [64, R + (F + 3) // 4, H / 8, W / 8], zeros for the R references."""
    frames, height, width = mask.shape
    h, w = height // SPATIAL, width // SPATIAL
    packed = mask.reshape(frames, h, SPATIAL, w, SPATIAL).permute(2, 4, 0, 1, 3)
    packed = packed.reshape(SPATIAL * SPATIAL, frames, h, w)
    packed = F.interpolate(packed[None], size=((frames + TEMPORAL - 1) // TEMPORAL, h, w), mode="nearest-exact")[0]
    return torch.cat([packed.new_zeros(SPATIAL * SPATIAL, references, h, w), packed], dim=1)


def fit_reference(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """image [3, h, w] in [-1, 1] -> [3, height, width]: scaled to fit (aspect kept, bilinear) and centred on a white
    canvas, as the official pipeline places reference images; an image of the right size is returned as is."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise InvalidInputError(f"a reference image must be [3, H, W]; got {tuple(image.shape)}")
    if tuple(image.shape[1:]) == (height, width):
        return image
    scale = min(height / image.shape[1], width / image.shape[2])
    new_h, new_w = max(1, int(image.shape[1] * scale)), max(1, int(image.shape[2] * scale))
    resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    canvas = torch.ones(3, height, width, dtype=resized.dtype, device=image.device)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, top:top + new_h, left:left + new_w] = resized
    return canvas


def vace_conditioning(encode: Callable[[torch.Tensor], torch.Tensor], num_frames: int, height: int, width: int, *,
                      frames: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                      reference_images: Sequence[torch.Tensor] = (), strength: float = 1.0) -> VaceConditioning:
    """Build the VACE context (module docstring) for one video of ``num_frames`` x ``height`` x ``width``.

    Args:
        encode: the normalised Wan2.1 VAE encoder [3, F, H, W] -> [16, F', H/8, W/8].
        frames: control video [3, F, H, W] in [-1, 1] (depth, pose, the video to inpaint...); None: zeros.
        mask: [F, H, W] in [0, 1], 1 where the model generates; None: all ones.
        reference_images: [3, h, w] images in [-1, 1], fitted to the size (`fit_reference`).
        strength: hint scale.
    """
    check_size(num_frames, height, width)
    expected = (num_frames, height, width)
    if frames is None:
        frames = torch.zeros(3, *expected)
    if frames.dim() != 4 or frames.shape[0] != 3 or tuple(frames.shape[1:]) != expected:
        raise InvalidInputError(f"the control video is {tuple(frames.shape)}; expected [3, {num_frames}, {height}, "
                                f"{width}] (frames, height and width of the video to generate)")
    if mask is None:
        mask = torch.ones(expected)
    if mask.dim() == 4 and mask.shape[0] == 1:
        mask = mask[0]
    if tuple(mask.shape) != expected:
        raise InvalidInputError(f"the VACE mask is {tuple(mask.shape)}; expected [{num_frames}, {height}, {width}] "
                                "(one mask per control frame, same size)")
    frames = frames.float()
    binary = (mask.float() > 0.5).float()
    inactive, reactive = encode(frames * (1 - binary)), encode(frames * binary)
    latents = torch.cat([inactive, reactive], dim=0).float()
    references = [encode(fit_reference(image, height, width).float()[:, None]).float() for image in reference_images]
    if references:
        latents = torch.cat([torch.cat([ref, torch.zeros_like(ref)], dim=0) for ref in references] + [latents], dim=1)
    masks = mask_channels(mask.float(), len(references)).to(latents)
    if masks.shape[1:] != latents.shape[1:]:
        raise InvalidInputError(f"the VAE gave latents {tuple(latents.shape)} but the mask packs to "
                                f"{tuple(masks.shape)}; is this a Wan2.1 VAE?")
    return VaceConditioning(torch.cat([latents, masks], dim=0)[None], len(references), float(strength))


def vace_to_video(context: torch.Tensor, vace: VaceConditioning,
                  negative_context: torch.Tensor | None = None) -> Conditioning:
    """The sampler's conditioning for a VACE model: text contexts [1, L, text_dim] and the VACE context (both CFG
    branches take it, as official)."""
    return Conditioning(context=context, latent_shape=vace.latent_shape, negative_context=negative_context,
                        vace_context=vace.context, vace_strength=vace.strength)


def trim_references(latent: torch.Tensor, vace: VaceConditioning) -> torch.Tensor:
    """latent [B, C, R + F', h, w] -> [B, C, F', h, w]: the reference frames removed."""
    return latent[:, :, vace.trim:]
