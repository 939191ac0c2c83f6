"""Node: the whole Wan sampling run (T2V, I2V, FLF2V, TI2V; one model or a Wan2.2 expert pair) in one place."""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..errors import InvalidInputError
from ..models import WanDiT
from ..models.latent_spaces import latent_space, to_normalized, to_raw
from ..models.residency import keep_host_copies
from ..sampling import (Conditioning, DistillSchedule, FlowEuler, FlowUniPC, first_last_to_video, image_to_video,
                        sample, text_to_video, ti2v_image_to_video)
from ..sampling.failures import guarded
from . import host
from .native import network_of
from .vace_node import vace_conditioning_of
from .values import TEXT_LEN, image_of

log = logging.getLogger(__name__)

SCHEDULES = ("distill", "unipc", "euler")
DEFAULT_STEP_LIST = "1000,750,500,250"
DEFAULT_STEPS = 40


def ignored_widget(schedule: str, denoising_step_list: str, steps: int) -> str | None:
    """The line saying which schedule widget this run ignores, when it was changed from its default (V1 nodes
    cannot hide a widget, so a user may set the one that does nothing); None when there is nothing to say."""
    if schedule == "distill" and steps != DEFAULT_STEPS:
        return f"schedule distill ignores steps ({steps}); its steps are the denoising_step_list"
    if schedule != "distill" and denoising_step_list.replace(" ", "") != DEFAULT_STEP_LIST:
        return (f"schedule {schedule} ignores denoising_step_list ({denoising_step_list!r}); it runs the "
                f"'steps' widget's {steps} steps")
    return None


# Keys core's conditioning nodes add that this sampler cannot honour (timestep ranges, areas, hooks, ControlNet).
_UNSUPPORTED_KEYS = ("start_percent", "end_percent", "area", "mask", "hooks", "control",
                     "time_dim_concat", "reference_latents")


def context_of(conditioning, name: str) -> torch.Tensor:
    """[1, L <= 512, D] from core CONDITIONING; core pads umT5 output with zero rows to at least 512."""
    if len(conditioning) != 1:
        raise InvalidInputError(f"the {name} conditioning holds {len(conditioning)} entries (combined or "
                                "timestep-ranged prompts); the Wan Express sampler takes exactly one")
    context, extra = conditioning[0]
    carried = [key for key in _UNSUPPORTED_KEYS if extra.get(key) is not None]
    if carried:
        raise InvalidInputError(f"the {name} conditioning carries {', '.join(carried)}, which the Wan Express "
                                "sampler does not apply; use core's KSampler for that graph")
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


def core_image_conditioning(positive, config, negative_context, clip_fea) -> Conditioning | None:
    """I2V / FLF2V conditioning from core's WanImageToVideo / WanFirstLastFrameToVideo (``concat_latent_image``,
    ``concat_mask`` in the positive), as the official ``y``: the mask (1 on given frames, 4 per latent frame) then
    the normalised image latent."""
    extra = positive[0][1]
    image = extra.get("concat_latent_image")
    if image is None:
        return None
    if not config.y_dim:
        raise InvalidInputError(f"the positive conditioning carries an image (concat_latent_image, from core's "
                                f"WanImageToVideo), but this {config.model_type} model generates from text only")
    image = to_normalized(image.float())
    mask = extra.get("concat_mask")
    given = torch.zeros_like(image[:, :1]) if mask is None else 1 - mask.float()
    if given.shape[1] == 1:
        given = given.expand(-1, 4, -1, -1, -1)
    if given.shape[2:] != image.shape[2:]:
        raise InvalidInputError(f"the conditioning's concat_mask {tuple(mask.shape)} does not fit its image latent "
                                f"{tuple(image.shape)}")
    context = context_of(positive, "positive")
    return Conditioning(context, tuple(image.shape[1:]), negative_context, y=torch.cat([given, image], dim=1),
                        clip_fea=clip_fea)


def expert_hook(models: dict, offload_idle: bool, latent_shape):
    """Expert switch of a Wan2.2 pair through ComfyUI's memory manager: the running expert is loaded (with its LoRA
    patches), the idle one given back first when ``offload_idle``.

    Our experts keep persistent host copies of their weights (pinned with CUDA, made once: `keep_host_copies`), so
    core giving one back drops its GPU copy instead of copying ~14 GB (FP8) back to pageable memory, and loading
    copies from pinned memory with ``non_blocking``; core's own placement decisions (what fits, lowvram) stay its.
    """
    def hook(active, idle):
        for network in (active, idle):
            if isinstance(network, WanDiT):  # core's own Wan network (UNETLoader) moves the ordinary way
                keep_host_copies(network)
        if offload_idle:
            host.unload_model(models[id(idle)])
        host.load_models([models[id(active)]], latent_shape)
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
                   "Each schedule ignores the other's widget: 'distill' runs denoising_step_list and ignores steps; "
                   "'unipc'/'euler' run steps and ignore denoising_step_list. "
                   "Connect start_image (+ vae) for I2V/TI2V, start and end images for FLF2V, and the CLIP vision "
                   "output for Wan2.1 I2V/FLF2V. A Wan2.2 A14B pair switches experts by itself. Output: a core "
                   "LATENT (raw VAE space).")
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A Wan model: from the Wan Express DiT loader (runs its FP8/INT8 "
                                   "kernels) or core's diffusion model loader; the high-noise expert of a pair."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt: one umT5 encoding (Wan Express Text Encode "
                                             "or core's CLIP Text Encode with a Wan umT5); core's WanImageToVideo "
                                             "output carries the start image too."}),
                "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16,
                                  "tooltip": "Video width (I2V: the area width x height sets the size; the image "
                                             "sets the aspect)."}),
                "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16, "tooltip": "Video height."}),
                "length": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4,
                                   "tooltip": "Frames, 1 + 4k (81 = 5 s at 16 fps)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "The starting noise; the same seed and settings give the same video."}),
                "schedule": (list(SCHEDULES), {"default": "distill", "tooltip": "distill: LightX2V's few-step "
                             "schedule for distilled models / distill LoRAs (uses denoising_step_list, ignores "
                             "steps). unipc / euler: the official multi-step samplers (use steps, ignore "
                             "denoising_step_list)."}),
                "denoising_step_list": ("STRING", {"default": DEFAULT_STEP_LIST, "tooltip": "schedule distill "
                                        "only (ignored by unipc / euler): the training timesteps to visit, high to "
                                        "low, e.g. 1000,750,500,250 for 4 steps."}),
                "steps": ("INT", {"default": DEFAULT_STEPS, "min": 1, "max": 200, "tooltip": "schedule unipc / "
                                  "euler only (ignored by distill, whose steps are the denoising_step_list): how "
                                  "many steps."}),
                "shift": ("FLOAT", {"default": 5.0, "min": 0.1, "max": 50.0, "step": 0.1, "tooltip": "Flow "
                                    "shift of the timesteps (5: the 4-step distill and Wan's default); higher "
                                    "spends more of the steps at high noise."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1,
                                  "tooltip": "1 = no guidance (distilled models). Above 1 needs a negative."}),
                "noise_source": (["cpu", "lightx2v"], {"default": "cpu", "tooltip": "cpu: the same video on any "
                                 "machine; lightx2v: LightX2V's CUDA noise and bf16 latents, for parity."}),
                "offload_idle_expert": ("BOOLEAN", {"default": True, "tooltip": "Wan2.2 pair: keep only the "
                                        "running expert on the GPU."}),
            },
            "optional": {
                "model_low": ("MODEL", {"tooltip": "Wan2.2 A14B: the low-noise expert; the sampler switches to it "
                                       "at the model's boundary (4-step distill: after step 2)."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt, used when cfg is above 1."}),
                "vae": ("WANEXPRESS_VAE", {"tooltip": "The Wan Express VAE, to encode start_image / end_image "
                                          "(not needed for text-to-video)."}),
                "start_image": ("IMAGE", {"tooltip": "I2V / TI2V: the first frame (needs vae; Wan2.1 I2V also "
                                          "clip_vision_output)."}),
                "end_image": ("IMAGE", {"tooltip": "FLF2V: the last frame, with start_image (Wan2.1 FLF2V: CLIP "
                                        "vision of both)."}),
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {"tooltip": "Wan2.1 I2V / FLF2V: the CLIP vision "
                                       "encoding of the image(s); ignored by Wan2.2 models, which have no CLIP "
                                       "branch."}),
                "latent": ("LATENT", {"tooltip": "Start from this latent (video-to-video, extension): with denoise "
                                     "below 1 it is noised to the level of the first step run; its size replaces "
                                     "width / height / length. A TI2V latent with a noise_mask keeps frame 0."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "Fraction of the schedule's steps to run, from its end (1 = all, "
                                                 "from pure noise). Below 1 needs a latent."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, length=None, denoising_step_list=None):
        """Checked when the prompt is queued, before any node runs (values of connected inputs are not known yet)."""
        if length is not None and (length - 1) % 4:
            return (f"length {length}: Wan videos have 1 + 4k frames (for example 81, 49 or 17); "
                    f"use {length - (length - 1) % 4} or {length - (length - 1) % 4 + 4}")
        if denoising_step_list is not None:
            try:
                DistillSchedule(parse_step_list(denoising_step_list))
            except InvalidInputError as error:
                return str(error)
        return True

    def generate(self, model, positive, width, height, length, seed, schedule, denoising_step_list, steps, shift,
                 cfg, noise_source, offload_idle_expert, model_low=None, negative=None, vae=None, start_image=None,
                 end_image=None, clip_vision_output=None, latent=None, denoise=1.0):
        patchers = [model] if model_low is None else [model, model_low]
        networks = [network_of(patcher) for patcher in patchers]
        config = networks[0].config
        negative_context = None if negative is None else context_of(negative, "negative")
        clip_fea = clip_features(clip_vision_output, positive)
        if clip_fea is not None and not config.clip_branch:
            log.warning("this %s model has no CLIP branch (Wan2.2 / TI2V); the CLIP vision output is not used",
                        config.model_type)
            clip_fea = None
        conditioning = core_image_conditioning(positive, config, negative_context, clip_fea)
        if conditioning is None:
            conditioning = vace_conditioning_of(positive, config, context_of(positive, "positive"), negative_context)
        if conditioning is not None and (start_image is not None or end_image is not None):
            raise InvalidInputError("the positive conditioning already carries an image (core's WanImageToVideo); "
                                    "disconnect start_image / end_image, or use plain text conditioning")
        if conditioning is None:
            if vae is not None and start_image is not None:
                host.bring(vae)
            conditioning = self._conditioning(config, vae, context_of(positive, "positive"), negative_context,
                                              clip_fea, start_image, end_image, width, height, length, latent)
        if (ignored := ignored_widget(schedule, denoising_step_list, steps)) is not None:
            log.info(ignored)
        if schedule == "distill":
            plan = DistillSchedule(parse_step_list(denoising_step_list), shift=shift, cfg=cfg)
        else:
            plan = (FlowUniPC if schedule == "unipc" else FlowEuler)(steps=steps, shift=shift, cfg=cfg)
        init_latent, start_step = _start(latent, denoise, plan.num_steps)
        if latent is not None and latent.get("noise_mask") is not None:
            conditioning = _keep_first_frame(conditioning, latent)
        device = host.torch_device()
        shape = conditioning.latent_shape
        if len(patchers) == 2:
            hook = expert_hook({id(n): p for n, p in zip(networks, patchers)}, offload_idle_expert, shape)
        else:
            hook = None
            guarded("loading the DiT onto the GPU", host.load_models, patchers, shape)
        result = sample(networks if len(networks) == 2 else networks[0], conditioning, schedule=plan, seed=seed,
                        noise_source=noise_source, device=device,
                        progress=host.progress_callback(plan.num_steps - start_step), interrupt=host.interrupt_check(),
                        expert_hook=hook, init_latent=init_latent, start_step=start_step)
        return ({"samples": to_raw(result).cpu()},)

    @staticmethod
    def _conditioning(config, vae, context, negative_context, clip_fea, start_image, end_image, width, height,
                      length, latent):
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
        if vae.z_dim != config.out_dim:
            wanted = latent_space(config.out_dim)
            raise InvalidInputError(f"this {config.model_type} model works in {wanted.name} latents "
                                    f"({config.out_dim} channels) but the connected VAE makes {vae.z_dim}-channel "
                                    f"latents; load the {wanted.name} VAE (Wan{wanted.vae_version}_VAE.pth)")
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


def _latent_shape(latent, config) -> tuple[int, int, int, int]:
    samples = latent["samples"]
    if samples.dim() != 5 or samples.shape[0] != 1 or samples.shape[1] != config.out_dim:
        raise InvalidInputError(f"the latent has shape {tuple(samples.shape)}; this {config.model_type} model makes "
                                f"[1, {config.out_dim}, frames, height, width] latents")
    return tuple(samples.shape[1:])


def _start(latent, denoise: float, num_steps: int) -> tuple[torch.Tensor | None, int]:
    """(normalised start latent or None, first step) for ``denoise``: the last ``round(steps·denoise)`` steps run."""
    if denoise >= 1.0:
        return None, 0
    if latent is None:
        raise InvalidInputError(f"denoise {denoise:g} below 1 needs a latent input to start from")
    run = max(1, round(num_steps * denoise))
    return to_normalized(latent["samples"].float()), num_steps - run


def _keep_first_frame(conditioning: Conditioning, latent) -> Conditioning:
    """A LATENT with a ``noise_mask`` (core's Wan22ImageToVideoLatent): latent frame 0 stays the given image."""
    mask = latent["noise_mask"].float()
    kept = (mask.amax(dim=(0, 1, 3, 4)) == 0).tolist()
    if not kept[0] or any(kept[1:]):
        raise InvalidInputError("the latent's noise_mask keeps frames other than the first; the Wan Express sampler "
                                "keeps only frame 0 (TI2V image to video)")
    first = to_normalized(latent["samples"].float())[:, :, :1]
    return dataclasses.replace(conditioning, first_latent=first)
