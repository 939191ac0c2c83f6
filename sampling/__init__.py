"""Samplers, schedules, expert switching and conditioning.

`sample(models, conditioning, *, schedule, seed)` runs one generation; build the conditioning with
`text_to_video`, `image_to_video`, `first_last_to_video` or `ti2v_image_to_video`, and pick a schedule:
`DistillSchedule` (LightX2V 4-step), `FlowUniPC` (official default) or `FlowEuler`.
"""

from .conditioning import (AREA_480P, AREA_720P, AREA_TI2V, Conditioning, first_last_to_video, image_to_video,
                           text_to_video, ti2v_image_to_video)
from .noise import initial_noise
from .prompts import DEFAULT_NEGATIVE_PROMPT, negative_prompt
from .sampler import sample
from .schedules import BOUNDARY_I2V, BOUNDARY_T2V, DistillSchedule, FlowEuler, FlowUniPC
from .sizes import i2v_latent_size, latent_frames, ti2v_output_size

__all__ = [
    "AREA_480P", "AREA_720P", "AREA_TI2V", "BOUNDARY_I2V", "BOUNDARY_T2V", "DEFAULT_NEGATIVE_PROMPT", "Conditioning",
    "DistillSchedule", "FlowEuler", "FlowUniPC", "first_last_to_video", "i2v_latent_size",
    "image_to_video", "initial_noise", "latent_frames", "negative_prompt", "sample",
    "text_to_video", "ti2v_image_to_video", "ti2v_output_size",
]
