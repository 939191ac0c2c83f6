"""The embedded demo: a tiny random Wan model written in the official folder layout, loaded back and run.

`python -m wan_express demo` writes a complete tiny Wan2.1 T2V folder (``config.json``, two DiT shards with their
index, the umT5 ``.pth`` with a ``google/umt5-xxl/`` tokenizer, ``Wan2.1_VAE.pth``) to a temporary folder, loads
it like a real one and turns a prompt into a 9-frame video with the 4-step distill schedule, on CPU in seconds.
The files come from `synthetic`, which also builds the synthetic models of the tests.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from .loaders import find_components, load_dit, load_text_encoder, load_vae
from .sampling import DistillSchedule, sample, text_to_video
from .synthetic import write_model_folder

DEMO_PROMPT = "a red fox running through snow, the camera following it"


def run_demo(prompt: str = DEMO_PROMPT) -> str:
    """Write a tiny model folder, then run prompt -> umT5 -> 4-step distill sampling -> VAE; returns a report."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wan_express_demo_") as tmp:
        folder = write_model_folder(Path(tmp) / "Wan2.1-T2V-tiny")
        parts = find_components(folder)
        model = load_dit(folder, dtype=torch.float32)
        text_encoder = load_text_encoder(parts.require("text_encoder"), parts.require("tokenizer"),
                                         dtype=torch.float32)
        vae = load_vae(parts.require("vae"))
        context = text_encoder.encode([prompt])[0][None]
        conditioning = text_to_video(context, width=96, height=64, frames=9)
        schedule = DistillSchedule()
        latent = sample(model, conditioning, schedule=schedule, seed=0)
        video = vae.decode(latent)
    if not torch.isfinite(video).all():
        raise RuntimeError("demo produced a non-finite video")
    cfg = model.config
    return (f"Wan Express demo: official folder (DiT shards + index + config.json, umT5 .pth + tokenizer, "
            f"Wan2.1_VAE.pth) -> WanDiT {cfg.model_type} dim {cfg.dim} x {cfg.num_layers} blocks\n"
            f"prompt {prompt!r} -> context {tuple(context.shape)} -> {schedule.num_steps}-step distill sampling "
            f"(timesteps {', '.join(f'{t:g}' for t in schedule.timesteps().tolist())}) -> latent "
            f"{tuple(latent.shape)} -> VAE decode -> video {tuple(video.shape)}, "
            f"{time.perf_counter() - started:.2f} s on CPU")


def add_arguments(parser) -> None:
    """The demo takes no options."""


def run(args) -> int:
    print(run_demo())
    return 0
