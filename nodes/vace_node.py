"""Node: Wan2.1 VACE conditioning (control video, mask, reference image, strength) for the Wan Express sampler,
and the reading of VACE conditioning from a positive CONDITIONING (ours or core's ``WanVaceToVideo``).

Both put core's keys in the conditioning: ``vace_frames`` [1, 32, R + T, h, w] raw-space inactive + reactive
latents, ``vace_mask`` [1, 64, R + T, h, w] and ``vace_strength``, one-element lists each; so core's KSampler runs
our node's output too, and our sampler runs core's node's (`vace_conditioning_of`). Cut the R reference frames
from the sampled latent with core's TrimVideoLatent (``trim_latent`` output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..models.latent_spaces import to_normalized, to_raw
from ..sampling import Conditioning
from ..sampling.vace import vace_conditioning
from . import host

VACE_KEYS = ("vace_frames", "vace_mask", "vace_strength")


def vace_conditioning_of(positive, config, context: torch.Tensor,
                         negative_context: torch.Tensor | None) -> Conditioning | None:
    """The sampler's VACE `Conditioning` from the positive's ``vace_*`` keys; None when it has none."""
    extra = positive[0][1]
    frames = extra.get("vace_frames")
    if frames is None:
        return None
    if not config.is_vace:
        raise InvalidInputError("the positive conditioning carries VACE frames (a VACE conditioning node) but this "
                                f"{config.model_type} model is not a Wan2.1 VACE model; load a VACE model")
    if len(frames) != 1:
        raise InvalidInputError(f"the conditioning holds {len(frames)} chained VACE conditionings; the Wan Express "
                                "sampler takes one")
    mask = extra.get("vace_mask") or [torch.ones_like(frames[0][:, :1]).expand(-1, 64, -1, -1, -1)]
    strength = (extra.get("vace_strength") or [1.0])[0]
    latents = torch.cat([to_normalized(chunk) for chunk in frames[0].float().split(16, dim=1)], dim=1)
    context_96 = torch.cat([latents, mask[0].float()], dim=1)
    return Conditioning(context, (config.out_dim, *context_96.shape[2:]), negative_context,
                        vace_context=context_96, vace_strength=float(strength))


def _video(images: torch.Tensor, length: int, width: int, height: int, fill: float) -> torch.Tensor:
    """IMAGE / MASK frames [N, H, W(, C)] -> [C, length, height, width] resized (bilinear), padded with ``fill``."""
    frames = images[:length].float()
    frames = frames[..., None] if frames.dim() == 3 else frames[..., :3]
    frames = F.interpolate(frames.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False)
    if frames.shape[0] < length:
        frames = torch.cat([frames, frames.new_full((length - frames.shape[0], *frames.shape[1:]), fill)])
    return frames.permute(1, 0, 2, 3)


class WanExpressVaceConditioning:
    """Adds Wan2.1 VACE conditioning (control video / mask / reference image) to the prompts."""

    CATEGORY = "Wan Express/conditioning"
    DESCRIPTION = ("Wan2.1 VACE: control video (depth, pose, edges, or the video to inpaint), its mask (white = "
                   "generate), and a reference image, as the official pipeline encodes them. Connect the outputs "
                   "to the Wan Express Sampler (or core's KSampler) with a VACE model; cut trim_latent frames from "
                   "the result with TrimVideoLatent.")
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "INT")
    RETURN_NAMES = ("positive", "negative", "trim_latent")
    FUNCTION = "condition"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "The prompt."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt."}),
                "vae": ("WANEXPRESS_VAE", {"tooltip": "The Wan2.1 VAE (Wan Express VAE Loader)."}),
                "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16}),
                "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16}),
                "length": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4, "tooltip": "Frames, 1 + 4k."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "Scale of the VACE hints (1 = official)."}),
            },
            "optional": {
                "control_video": ("IMAGE", {"tooltip": "Frames to follow or to inpaint; resized, padded grey."}),
                "control_masks": ("MASK", {"tooltip": "1 where the model generates, 0 where the control video is "
                                          "kept; one mask applies to every frame, fewer than length are padded "
                                          "with 1; none: generate everywhere."}),
                "reference_image": ("IMAGE", {"tooltip": "A subject / style reference (its first frame)."}),
            },
        }

    def condition(self, positive, negative, vae, width, height, length, strength, control_video=None,
                  control_masks=None, reference_image=None):
        host.bring(vae)

        def encode(video: torch.Tensor) -> torch.Tensor:
            return vae.encode(video[None], interrupt=host.interrupt_check())[0].float()

        frames = None if control_video is None else _video(control_video, length, width, height, 0.5) * 2 - 1
        if control_masks is not None and control_masks.dim() == 3 and control_masks.shape[0] == 1:
            control_masks = control_masks.expand(length, -1, -1)  # one mask (e.g. from LoadImage) for every frame
        mask = None if control_masks is None else _video(control_masks, length, width, height, 1.0)[0]
        references = ([] if reference_image is None
                      else [_video(reference_image[:1], 1, width, height, 1.0)[:, 0] * 2 - 1])
        vace = vace_conditioning(encode, length, height, width, frames=frames, mask=mask,
                                 reference_images=references, strength=strength)
        latents, masks = vace.context[:, :32], vace.context[:, 32:]
        raw = torch.cat([to_raw(chunk) for chunk in latents.split(16, dim=1)], dim=1).cpu()
        values = {"vace_frames": [raw], "vace_mask": [masks.cpu()], "vace_strength": [float(strength)]}
        return _with(positive, values), _with(negative, values), vace.trim


def _with(conditioning, values: dict) -> list:
    """Core's ``conditioning_set_values(append=True)`` semantics: each entry's lists extended by ``values``."""
    out = []
    for tensor, extra in conditioning:
        extra = dict(extra)
        for key, value in values.items():
            extra[key] = [*extra.get(key, []), *value]
        out.append([tensor, extra])
    return out
