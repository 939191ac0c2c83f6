"""Node: the whole Wan sampling run (T2V, I2V, FLF2V, TI2V; one model or a Wan2.2 expert pair) in one place."""

from __future__ import annotations

import logging

import torch

from ..errors import InvalidInputError
from ..models.latent_spaces import latent_space, to_raw
from ..sampling import (DistillSchedule, FlowEuler, FlowUniPC, first_last_to_video, image_to_video, sample,
                        text_to_video, ti2v_image_to_video)
from . import host
from .values import TEXT_LEN, image_of

log = logging.getLogger(__name__)

SCHEDULES = ("distill", "unipc", "euler")


# Keys core's image nodes (WanImageToVideo, ...) add to CONDITIONING; here images come through the sampler inputs.
_CORE_IMAGE_KEYS = ("concat_latent_image", "concat_mask")


def context_of(conditioning, name: str) -> torch.Tensor:
    """[1, L <= 512, D] from core CONDITIONING; core pads umT5 output with zero rows to at least 512."""
    if len(conditioning) != 1:
        raise InvalidInputError(f"the {name} conditioning holds {len(conditioning)} entries (combined or "
                                "timestep-ranged prompts); the Wan Express sampler takes exactly one")
    context, extra = conditioning[0]
    carried = [key for key in _CORE_IMAGE_KEYS if key in extra]
    if carried:
        raise InvalidInputError(f"the {name} conditioning carries core image conditioning ({', '.join(carried)}, "
                                "e.g. from WanImageToVideo); connect the image to the sampler's start_image instead")
    if context.shape[0] != 1:
        raise InvalidInputError(f"the {name} conditioning is a batch of {context.shape[0]}; use one prompt")
    if context.shape[1] > TEXT_LEN:
        if context[:, TEXT_LEN:].abs().max() > 0:
            raise InvalidInputError(f"the {name} prompt is longer than 512 tokens; Wan models read at most 512")
        context = context[:, :TEXT_LEN]
    return context.float()


def clip_features(clip_vision_output, positive) -> torch.Tensor | None:
    """CLIP tokens [1, 257·n, 1280] from the socket, else from a ``clip_vision_output`` core put in the positive."""
    output = clip_vision_output if clip_vision_output is not None else positive[0][1].get("clip_vision_output")
    return None if output is None else output.penultimate_hidden_states.float()


def offload_hook(device):
    """Expert hook that keeps only the running Wan2.2 expert on ``device`` (the idle one waits in CPU memory)."""
    def hook(active, idle):
        idle.to("cpu")
        active.to(device)
    return hook


def parse_step_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise InvalidInputError(f"denoising_step_list {text!r} must be whole numbers separated by commas, "
                                "e.g. 1000,750,500,250") from None


class WanExpressSampler:
    """Generates a Wan video latent; switches Wan2.2 high/low experts automatically."""

    CATEGORY = "Wan Express/sampling"
    DESCRIPTION = ("Sample a Wan video. schedule 'distill' is LightX2V's 4-step (or any step list) for distilled "
                   "models or distill LoRAs, cfg 1; 'unipc'/'euler' are the official multi-step samplers with CFG. "
                   "Connect start_image (+ vae) for I2V/TI2V, start and end images for FLF2V, and the CLIP vision "
                   "output for Wan2.1 I2V/FLF2V. A Wan2.2 A14B pair switches experts by itself. Output: a core "
                   "LATENT (raw VAE space).")
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dit": ("WANEXPRESS_DIT",),
                "positive": ("CONDITIONING",),
                "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16,
                                  "tooltip": "Video width (I2V: the area width x height sets the size; the image "
                                             "sets the aspect)."}),
                "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16, "tooltip": "Video height."}),
                "length": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4,
                                   "tooltip": "Frames, 1 + 4k (81 = 5 s at 16 fps)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "schedule": (list(SCHEDULES), {"default": "distill"}),
                "denoising_step_list": ("STRING", {"default": "1000,750,500,250",
                                                   "tooltip": "distill: the training timesteps to visit."}),
                "steps": ("INT", {"default": 40, "min": 1, "max": 200, "tooltip": "unipc / euler only."}),
                "shift": ("FLOAT", {"default": 5.0, "min": 0.1, "max": 50.0, "step": 0.1}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1,
                                  "tooltip": "1 = no guidance (distilled models). Above 1 needs a negative."}),
                "noise_source": (["cpu", "lightx2v"], {"default": "cpu", "tooltip": "cpu: the same video on any "
                                 "machine; lightx2v: LightX2V's CUDA noise and bf16 latents, for parity."}),
                "offload_idle_expert": ("BOOLEAN", {"default": True, "tooltip": "Wan2.2 pair: keep only the "
                                        "running expert on the GPU."}),
            },
            "optional": {
                "negative": ("CONDITIONING",),
                "vae": ("WANEXPRESS_VAE",),
                "start_image": ("IMAGE",),
                "end_image": ("IMAGE",),
                "clip_vision_output": ("CLIP_VISION_OUTPUT",),
            },
        }

    def generate(self, dit, positive, width, height, length, seed, schedule, denoising_step_list, steps, shift,
                 cfg, noise_source, offload_idle_expert, negative=None, vae=None, start_image=None, end_image=None,
                 clip_vision_output=None):
        models = dit if isinstance(dit, tuple) else (dit,)
        config = models[0].config
        context = context_of(positive, "positive")
        negative_context = None if negative is None else context_of(negative, "negative")
        clip_fea = clip_features(clip_vision_output, positive)
        if clip_fea is not None and not config.clip_branch:
            log.warning("this %s model has no CLIP branch (Wan2.2 / TI2V); the CLIP vision output is not used",
                        config.model_type)
            clip_fea = None
        conditioning = self._conditioning(config, vae, context, negative_context, clip_fea, start_image, end_image,
                                          width, height, length)
        if schedule == "distill":
            plan = DistillSchedule(parse_step_list(denoising_step_list), shift=shift, cfg=cfg)
        else:
            plan = (FlowUniPC if schedule == "unipc" else FlowEuler)(steps=steps, shift=shift, cfg=cfg)
        device = host.torch_device()
        host.free_gpu_memory()
        if len(models) == 2 and offload_idle_expert:
            hook = offload_hook(device)
        else:  # a cached pair may still be split between CPU and GPU by an earlier offloading run
            hook = None
            for model in models:
                model.to(device)
        latent = sample(models if len(models) == 2 else models[0], conditioning, schedule=plan, seed=seed,
                        noise_source=noise_source, device=device, progress=host.progress_callback(plan.num_steps),
                        interrupt=host.interrupt_check(), expert_hook=hook)
        return ({"samples": to_raw(latent).cpu()},)

    @staticmethod
    def _conditioning(config, vae, context, negative_context, clip_fea, start_image, end_image, width, height,
                      length):
        if config.clip_branch and clip_fea is None and start_image is not None:
            raise InvalidInputError("this Wan2.1 image model needs clip_vision_output (Wan Express CLIP Vision "
                                    "Encode of the start image, with the end image too for first-last-frame)")
        if start_image is not None and not config.y_dim and config.model_type != "ti2v":
            raise InvalidInputError(f"this {config.model_type} model generates from text only; it takes no "
                                    "start_image (load an I2V, FLF2V or TI2V model for image input)")
        if end_image is not None and config.model_type == "ti2v":
            raise InvalidInputError("TI2V-5B conditions on one image; it takes no end_image")
        if start_image is None:
            if end_image is not None:
                raise InvalidInputError("end_image needs a start_image (first-last-frame video)")
            if config.y_dim:
                raise InvalidInputError(f"this {config.model_type} model needs a start_image (and a vae)")
            space = latent_space(config.out_dim)
            return text_to_video(context, width=width, height=height, frames=length, z_dim=space.channels,
                                 stride=space.stride, negative_context=negative_context)
        if vae is None:
            raise InvalidInputError("a start_image needs the vae input to encode it")
        area = width * height
        first = image_of(start_image, 0)
        if end_image is not None:
            return first_last_to_video(vae, first, image_of(end_image, -1), context, frames=length, max_area=area,
                                       clip_fea=clip_fea, negative_context=negative_context)
        if config.model_type == "ti2v":
            return ti2v_image_to_video(vae, first, context, frames=length, max_area=area,
                                       negative_context=negative_context)
        return image_to_video(vae, first, context, frames=length, max_area=area, clip_fea=clip_fea,
                              negative_context=negative_context)
