"""The embedded demo: a tiny random Wan model written in the official folder layout, loaded back and run.

`python -m wan_express demo` writes ``config.json``, two ``diffusion_pytorch_model-0000k-of-00002.safetensors``
shards and their index to a temporary folder, loads it with `load_dit` and predicts a velocity on CPU in seconds.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from .loaders import load_dit
from .loaders.dit_loader import CONFIG_NAME, INDEX_NAME
from .models import WanConfig, WanDiT

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


def run_demo() -> str:
    """Write, load and run the tiny model; returns a short report."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wan_express_demo_") as tmp:
        folder = Path(tmp) / "Wan2.1-T2V-tiny"
        write_official_folder(folder, DEMO_CONFIG)
        model = load_dit(folder, dtype=torch.float32)
        generator = torch.Generator().manual_seed(0)
        latent = torch.randn(1, 16, 3, 8, 12, generator=generator)
        context = torch.randn(1, 20, DEMO_CONFIG.text_dim, generator=generator)
        with torch.no_grad():
            velocity = model(latent, torch.tensor([750.0]), context)
    if not torch.isfinite(velocity).all():
        raise RuntimeError("demo produced a non-finite velocity")
    cfg = model.config
    return (f"Wan Express demo: official folder ({len(list(cfg.to_json()))} config keys, 2 shards + index) -> "
            f"WanDiT {cfg.model_type} dim {cfg.dim} x {cfg.num_layers} blocks\n"
            f"latent {tuple(latent.shape)} at t=750 -> velocity {tuple(velocity.shape)}, "
            f"std {velocity.std().item():.4f}, {time.perf_counter() - started:.2f} s on CPU")


def add_arguments(parser) -> None:
    """The demo takes no options."""


def run(args) -> int:
    print(run_demo())
    return 0
