"""The embedded demo: a tiny random Wan model written in the official folder layout, loaded back and run.

`python -m wan_express demo` writes a complete tiny Wan2.1 T2V folder (``config.json``, two DiT shards with their
index, the umT5 ``.pth`` with a ``google/umt5-xxl/`` tokenizer, ``Wan2.1_VAE.pth``) to a temporary folder, loads
it like a real one and turns a prompt into a 9-frame video with the 4-step distill schedule, on CPU in seconds,
and writes the video: ``demo.mp4`` (H.264) through PyAV where ``av`` is installed (ComfyUI ships it), else an
animated ``demo.webp`` through Pillow. The files come from `synthetic`, which also builds the synthetic models of
the tests.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from .errors import InvalidInputError
from .loaders import find_components, load_dit, load_text_encoder, load_vae
from .sampling import DistillSchedule, sample, text_to_video
from .synthetic import write_model_folder

DEMO_PROMPT = "a red fox running through snow, the camera following it"
FPS = 16  # Wan's frame rate
VIDEO_SUFFIXES = (".mp4", ".webp")


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """Decoded video [1, 3, F, H, W] in [-1, 1] -> frames [F, H, W, 3] uint8."""
    return ((video[0].permute(1, 2, 3, 0).float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def write_mp4(frames: torch.Tensor, path: Path, fps: int = FPS) -> Path:
    """Frames [F, H, W, 3] uint8 (even sides) as H.264 yuv420p in an .mp4, through PyAV."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("h264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames.numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return path


def write_webp(frames: torch.Tensor, path: Path, fps: int = FPS) -> Path:
    """Frames [F, H, W, 3] uint8 as an animated, looping, lossless WebP, through Pillow."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames.numpy()]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   lossless=True)
    return path


def video_path(out: str | Path | None) -> Path:
    """Where the demo writes: ``out`` if it names a .mp4 / .webp file, else demo.mp4 (PyAV installed) or demo.webp
    in the folder ``out`` (default: the current folder)."""
    if out is not None and Path(out).suffix:
        path = Path(out)
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise InvalidInputError(f"{path}: the demo writes .mp4 or .webp videos")
        return path
    return Path(out or ".") / ("demo.mp4" if importlib.util.find_spec("av") is not None else "demo.webp")


def write_video(frames: torch.Tensor, path: Path) -> Path:
    """Frames [F, H, W, 3] uint8 as ``path``: .mp4 through PyAV, .webp through Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mp4":
        if importlib.util.find_spec("av") is None:
            raise InvalidInputError(f"{path}: writing .mp4 needs PyAV (pip install av); .webp needs only Pillow")
        return write_mp4(frames, path)
    return write_webp(frames, path)


def run_demo(prompt: str = DEMO_PROMPT, out: str | Path | None = None) -> str:
    """Write a tiny model folder, then run prompt -> umT5 -> 4-step distill sampling -> VAE, and write the video
    (`video_path`); returns a report ending with the video's path."""
    path = video_path(out)
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
    written = write_video(to_uint8_frames(video), path)
    cfg = model.config
    return (f"Wan Express demo: official folder (DiT shards + index + config.json, umT5 .pth + tokenizer, "
            f"Wan2.1_VAE.pth) -> WanDiT {cfg.model_type} dim {cfg.dim} x {cfg.num_layers} blocks\n"
            f"prompt {prompt!r} -> context {tuple(context.shape)} -> {schedule.num_steps}-step distill sampling "
            f"(timesteps {', '.join(f'{t:g}' for t in schedule.timesteps().tolist())}) -> latent "
            f"{tuple(latent.shape)} -> VAE decode -> video {tuple(video.shape)}, "
            f"{time.perf_counter() - started:.2f} s on CPU\n"
            f"wrote {written} ({video.shape[2]} frames, {FPS} fps)")


def add_arguments(parser) -> None:
    parser.add_argument("--out", help="the video file (.mp4 or .webp) or the folder for demo.mp4 / demo.webp "
                                      "(default: the current folder)")


def run(args) -> int:
    print(run_demo(out=args.out))
    return 0
