"""The embedded demo: a tiny random Wan model written in the official folder layout, loaded back and run.

`python -m wan_express demo` writes ``config.json``, two ``diffusion_pytorch_model-0000k-of-00002.safetensors``
shards with their index and a ``Wan2.1_VAE.pth`` to a temporary folder, loads them like a real Wan2.1 folder and
generates a 9-frame video with the 4-step distill schedule, on CPU in seconds. The writers here also build the
synthetic models of the tests.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from .loaders import find_components, load_dit, load_vae
from .loaders.dit_loader import CONFIG_NAME, INDEX_NAME
from .models import VaeConfig, WanConfig, WanDiT, WanVAE21, WanVAE22
from .sampling import DistillSchedule, sample, text_to_video

DEMO_CONFIG = WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)


def random_weights_(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter with random values that keep activations O(1).

    Matrices get fan-in scaled normals, norm weights stay near 1, modulation tables and biases are small; the
    output head is random too (the official init zeroes it, which would hide every error).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            if "modulation" in name or "scale_shift_table" in name:
                value = 0.5 * noise / math.sqrt(param.shape[-1])
            elif param.dim() >= 2 and "emb_pos" not in name and "pos_embed" not in name:
                value = noise / math.sqrt(param[0].numel())
            elif name.endswith(("weight", "gamma")) and param.dim() == 1:
                value = 1 + 0.1 * noise
            else:
                value = 0.1 * noise
            param.copy_(value.to(param.dtype))


def write_official_folder(folder: Path, config: WanConfig, *, seed: int = 0, shards: int = 2,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Write a random model as an official Wan folder: config.json, shards and index. Returns the tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    model = WanDiT(config)
    random_weights_(model, seed)
    state_dict = {key: tensor.to(dtype).contiguous() for key, tensor in model.state_dict().items()}
    keys = sorted(state_dict)
    weight_map = {}
    for shard in range(shards):
        name = f"diffusion_pytorch_model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[shard::shards]
        save_file({key: state_dict[key] for key in part}, str(folder / name))
        weight_map.update({key: name for key in part})
    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (folder / CONFIG_NAME).write_text(json.dumps({"_diffusers_version": "0.30.0", **config.to_json()}, indent=1))
    return state_dict


def write_vae(path: Path, version: str = "2.1", *, seed: int = 0, width: int = 8) -> Path:
    """A random Wan VAE with the official architecture and key names (``width`` channels instead of 96/160).

    ``.pth`` paths are written as the official files are (a plain tensor dict); others as safetensors.
    """
    vae_class, z_dim = (WanVAE21, 16) if version == "2.1" else (WanVAE22, 48)
    vae = vae_class(VaeConfig(version, dim=width, dec_dim=width, z_dim=z_dim))
    random_weights_(vae, seed)
    tensors = {key: tensor.contiguous() for key, tensor in vae.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pth":
        torch.save(tensors, str(path))
    else:
        save_file(tensors, str(path))
    return path


def run_demo() -> str:
    """Write a tiny model folder, then run the whole 4-step distill text-to-video path; returns a short report."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wan_express_demo_") as tmp:
        folder = Path(tmp) / "Wan2.1-T2V-tiny"
        write_official_folder(folder, DEMO_CONFIG)
        write_vae(folder / "Wan2.1_VAE.pth")
        components = find_components(folder)
        model = load_dit(folder, dtype=torch.float32)
        vae = load_vae(components.require("vae"))
        # A random stand-in for the umT5 embedding of a prompt (the demo ships no text encoder weights).
        context = torch.randn(1, 20, DEMO_CONFIG.text_dim, generator=torch.Generator().manual_seed(0))
        conditioning = text_to_video(context, width=96, height=64, frames=9)
        latent = sample(model, conditioning, schedule=DistillSchedule(), seed=0)
        video = vae.decode(latent)
    if not torch.isfinite(video).all():
        raise RuntimeError("demo produced a non-finite video")
    cfg = model.config
    return (f"Wan Express demo: official folder (config.json, 2 shards + index, Wan2.1_VAE.pth) -> "
            f"WanDiT {cfg.model_type} dim {cfg.dim} x {cfg.num_layers} blocks\n"
            f"4-step distill sampling (timesteps 1000, 937.5, 833.3, 625) -> latent {tuple(latent.shape)} -> "
            f"VAE decode -> video {tuple(video.shape)} in [{video.min().item():.2f}, {video.max().item():.2f}], "
            f"{time.perf_counter() - started:.2f} s on CPU")


def add_arguments(parser) -> None:
    """The demo takes no options."""


def run(args) -> int:
    print(run_demo())
    return 0
