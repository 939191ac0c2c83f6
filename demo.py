"""The embedded demo: a tiny random Wan model written in the official folder layout, loaded back and run.

`python -m wan_express demo` writes a complete tiny Wan2.1 T2V folder (``config.json``, two DiT shards with their
index, the umT5 ``.pth`` with a ``google/umt5-xxl/`` tokenizer, ``Wan2.1_VAE.pth``) to a temporary folder, loads
it like a real one and turns a prompt into a 9-frame video with the 4-step distill schedule, on CPU in seconds.
The writers here also build the synthetic models of the tests.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from .loaders import find_components, load_dit, load_text_encoder, load_vae
from .loaders.components import TEXT_ENCODER_FILE, TOKENIZER_DIR
from .loaders.dit.loader import CONFIG_NAME, INDEX_NAME
from .models import T5Config, UMT5Encoder, VaeConfig, WanConfig, WanDiT
from .models.latent_spaces import latent_space_of_vae
from .sampling import DistillSchedule, sample, text_to_video

DEMO_CONFIG = WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)
TOKENIZER_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,&<>'\"!?-"
DEMO_PROMPT = "a red fox running through snow, the camera following it"


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
    space = latent_space_of_vae(version)
    vae = space.vae_class(VaeConfig(version, dim=width, dec_dim=width, z_dim=space.channels))
    random_weights_(vae, seed)
    tensors = {key: tensor.contiguous() for key, tensor in vae.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pth":
        torch.save(tensors, str(path))
    else:
        save_file(tensors, str(path))
    return path


def write_tokenizer(folder: Path) -> Path:
    """A tiny SentencePiece-style tokenizer (Unigram + Metaspace, T5's ``$A </s>`` template, pad 0, end 1, unk 2)
    saved as ``<folder>/google/umt5-xxl/tokenizer.json``, as in an official folder. Returns that tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(char, -3.0) for char in TOKENIZER_CHARS] + [("\u2581" + char, -2.5) for char in TOKENIZER_CHARS]
    pieces += [("\u2581the", -1.0), ("\u2581cat", -1.0), ("ing", -1.5)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.add_special_tokens(["<pad>", "</s>", "<unk>"])
    target = folder / TOKENIZER_DIR
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(target / "tokenizer.json"))
    return target


def write_text_encoder(path: Path, vocab_size: int, dim: int, *, seed: int = 0) -> Path:
    """A random umT5 encoder with official key names (``dim`` wide, 2 blocks) saved like the official ``.pth``."""
    encoder = UMT5Encoder(T5Config(vocab_size=vocab_size, dim=dim, attn_dim=dim, ffn_dim=2 * dim, num_heads=4,
                                   num_layers=2))
    random_weights_(encoder, seed)
    torch.save({key: tensor.contiguous() for key, tensor in encoder.state_dict().items()}, str(path))
    return path


def write_model_folder(folder: Path, config: WanConfig = DEMO_CONFIG, *, seed: int = 0) -> Path:
    """A complete tiny Wan2.1 T2V folder as users download it: DiT shards + index + config.json,
    ``models_t5_umt5-xxl-enc-bf16.pth`` with ``google/umt5-xxl/``, and ``Wan2.1_VAE.pth``."""
    write_official_folder(folder, config, seed=seed)
    tokenizer = write_tokenizer(folder)
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    write_text_encoder(folder / TEXT_ENCODER_FILE, len(vocab), config.text_dim, seed=seed + 1)
    write_vae(folder / "Wan2.1_VAE.pth", seed=seed + 2)
    return folder


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
