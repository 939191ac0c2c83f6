"""Tiny synthetic Wan models written in the real on-disk formats, for the demo and the tests.

Random weights that keep activations O(1) (`random_weights_`), an official DiT folder (``config.json``, shards and
their index), the umT5 ``.pth`` with a ``google/umt5-xxl/`` tokenizer, a Wan VAE file, and all of them together as
the folder users download (`write_model_folder`). The files go through the same loaders as real ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from .loaders.components import TEXT_ENCODER_FILE, TOKENIZER_DIR
from .loaders.dit.folders import CONFIG_NAME, INDEX_NAME
from .models import T5Config, UMT5Encoder, VaeConfig, WanConfig, WanDiT
from .models.latent_spaces import latent_space_of_vae
from .models.wan_vace import vace_model_class

# Two 256-wide blocks: every code path of a Wan2.1 T2V model, on CPU in milliseconds.
TINY_CONFIG = WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)
TOKENIZER_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,&<>'\"!?-"


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


def random_dit_weights(config: WanConfig = TINY_CONFIG, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Official-named random DiT tensors, rounded to ``dtype``."""
    with torch.device("cpu"):
        model = vace_model_class()(config) if config.is_vace else WanDiT(config)
    random_weights_(model, seed)
    return {key: tensor.to(dtype).contiguous() for key, tensor in model.state_dict().items()}


def write_dit_shards(folder: Path, weights: dict[str, torch.Tensor], config: WanConfig, shards: int = 2) -> Path:
    """``weights`` as an official DiT folder: ``config.json``, ``shards`` safetensors shards and their index."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(weights)
    weight_map = {}
    for shard in range(shards):
        name = f"diffusion_pytorch_model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[shard::shards]
        save_file({key: weights[key] for key in part}, str(folder / name))
        weight_map.update({key: name for key in part})
    total = sum(t.numel() * t.element_size() for t in weights.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=1))
    (folder / CONFIG_NAME).write_text(json.dumps({"_diffusers_version": "0.30.0", **config.to_json()}, indent=1))
    return folder


def write_official_folder(folder: Path, config: WanConfig, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random fp32 DiT as an official Wan folder (two shards). Returns the tensors written."""
    weights = random_dit_weights(config, seed)
    write_dit_shards(folder, weights, config)
    return weights


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


def write_components(folder: Path, text_dim: int, *, seed: int = 0) -> Path:
    """Beside a DiT: ``models_t5_umt5-xxl-enc-bf16.pth`` (``text_dim`` wide) with ``google/umt5-xxl/``, and
    ``Wan2.1_VAE.pth``."""
    tokenizer = write_tokenizer(folder)
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    write_text_encoder(folder / TEXT_ENCODER_FILE, len(vocab), text_dim, seed=seed + 1)
    write_vae(folder / "Wan2.1_VAE.pth", seed=seed + 2)
    return folder


def write_model_folder(folder: Path, config: WanConfig = TINY_CONFIG, *, seed: int = 0) -> Path:
    """A complete tiny Wan2.1 T2V folder as users download it: DiT shards + index + config.json and the
    components (`write_components`)."""
    write_official_folder(folder, config, seed=seed)
    return write_components(folder, config.text_dim, seed=seed)


# Official umT5 name -> the Hugging Face T5 name ComfyUI's umt5_xxl files use, for `write_comfy_text_encoder`.
_COMFY_UMT5_BLOCK_NAMES = {
    "norm1": "0.layer_norm", "norm2": "1.layer_norm",
    "pos_embedding.embedding": "0.SelfAttention.relative_attention_bias", "attn.q": "0.SelfAttention.q", "attn.k": "0.SelfAttention.k", "attn.v": "0.SelfAttention.v",
    "attn.o": "0.SelfAttention.o", "ffn.gate.0": "1.DenseReluDense.wi_0", "ffn.fc1": "1.DenseReluDense.wi_1",
    "ffn.fc2": "1.DenseReluDense.wo",
}


def comfy_umt5_key(key: str) -> str:
    """An official umT5 key (``blocks.3.attn.q.weight``) as ComfyUI names it (``encoder.block.3.layer.0.SelfAttention
    .q.weight``); ``token_embedding`` is ``shared``, the final ``norm`` is ``encoder.final_layer_norm``."""
    if key == "token_embedding.weight":
        return "shared.weight"
    if key == "norm.weight":
        return "encoder.final_layer_norm.weight"
    _, index, rest = key.split(".", 2)
    layer, _, part = rest.rpartition(".")
    return f"encoder.block.{index}.layer.{_COMFY_UMT5_BLOCK_NAMES[layer]}.{part}"


def write_comfy_text_encoder(path: Path, weights: dict[str, torch.Tensor], spiece_model: bytes,
                             dtype: torch.dtype = torch.float16) -> Path:
    """umT5 ``weights`` (official names) laid out as ComfyUI's ``umt5_xxl_fp16.safetensors``: Hugging Face T5 names
    in ``dtype``, and the SentencePiece model's bytes embedded as the uint8 tensor ``spiece_model``."""
    tensors = {comfy_umt5_key(key): tensor.to(dtype).contiguous() for key, tensor in weights.items()}
    tensors["spiece_model"] = torch.frombuffer(bytearray(spiece_model), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
