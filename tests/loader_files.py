"""Writers of tiny synthetic DiTs in every on-disk layout the loaders read (spec formats.md §1-§6).

Each writer takes official-named float tensors and writes them with the exact key names, dtypes, scale shapes
and markers of one layout. Quantization here is an independent implementation of the producers' formulas
(LightX2V converter §4.2/§4.3, per-tensor §4.4), not the pack's own quantizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_express.models import WanConfig
from wan_express.synthetic import TINY_CONFIG, random_dit_weights, write_dit_shards

from .official_reference import official_to_diffusers

FP8_MAX, INT8_MAX = 448.0, 127.0


def tiny_weights(config: WanConfig = TINY_CONFIG, seed: int = 0, dtype: torch.dtype = torch.bfloat16):
    """Random official-named weights, rounded to ``dtype`` so every layout stores the same values."""
    return random_dit_weights(config, seed, dtype)


def is_target(key: str, tensor: torch.Tensor) -> bool:
    """LightX2V's converter rule (formats.md §4.1)."""
    parts = key.split(".")
    return tensor.dim() == 2 and len(parts) > 2 and parts[2] in ("self_attn", "cross_attn", "ffn")


def per_channel(weight: torch.Tensor, codes: str):
    w = weight.float()
    qmax = FP8_MAX if codes == "fp8" else INT8_MAX
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / qmax
    if codes == "fp8":
        return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale
    return (w / scale).round().clamp(-128, 127).to(torch.int8), scale


def per_tensor_fp8(weight: torch.Tensor):
    w = weight.float()
    scale = w.abs().max() / FP8_MAX
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def save(tensors: dict, path: Path, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def write_official(folder: Path, weights: dict, config: WanConfig = TINY_CONFIG) -> Path:
    """Official folder: config.json, configuration.json (ModelScope), fp32 shards and their index."""
    write_dit_shards(folder, {key: tensor.float() for key, tensor in weights.items()}, config)
    (folder / "configuration.json").write_text(json.dumps({"framework": "Pytorch", "task": "text-to-video"}))
    return folder


def write_lightx2v(path: Path, weights: dict, codes: str | None = None,
                   non_linear_dtype: torch.dtype = torch.bfloat16) -> Path:
    """LightX2V single file: bf16, or ``scaled_fp8_e4m3`` / ``int8`` with ``X.weight_scale [out, 1]``."""
    out = {}
    for key, tensor in weights.items():
        if codes and is_target(key, tensor):
            out[key], scale = per_channel(tensor, codes)
            out[key[:-len("weight")] + "weight_scale"] = scale
        else:
            out[key] = tensor.to(non_linear_dtype if codes else tensor.dtype)
    return save(out, path)


def write_scaled_fp8(path: Path, weights: dict, prefix: str = "", marker_elements: int = 2,
                     marker_dtype: torch.dtype = torch.float8_e4m3fn) -> Path:
    """Legacy scaled FP8 (LightX2V ``_comfyui``, Comfy-Org ``*_fp8_scaled``): 0-D ``X.scale_weight`` + marker."""
    out = {"scaled_fp8": torch.zeros(marker_elements, dtype=marker_dtype)}
    for key, tensor in weights.items():
        if is_target(key, tensor):
            out[prefix + key], scale = per_tensor_fp8(tensor)
            out[prefix + key[:-len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[prefix + key] = tensor
    return save(out, path)


def write_comfy_quant(path: Path, weights: dict, encoding: str, prefix: str = "") -> Path:
    """ComfyUI mixed precision: self-attention FP8 per tensor, FFN INT8 per row, cross-attention left float.

    ``encoding``: ``"tensor"`` (``X.comfy_quant`` uint8 JSON) or ``"metadata"`` (``_quantization_metadata``).
    """
    out, layers = {}, {}
    for key, tensor in weights.items():
        layer = key[:-len(".weight")]
        if is_target(key, tensor) and ".self_attn." in key:
            out[prefix + key], scale = per_tensor_fp8(tensor)
            out[prefix + layer + ".weight_scale"] = scale.reshape(())
            out[prefix + layer + ".input_scale"] = torch.tensor(1.0)
            layers[prefix + layer] = {"format": "float8_e4m3fn"}
        elif is_target(key, tensor) and ".ffn." in key:
            out[prefix + key], out[prefix + layer + ".weight_scale"] = per_channel(tensor, "int8")
            layers[prefix + layer] = {"format": "int8_tensorwise"}
        else:
            out[prefix + key] = tensor
    metadata = None
    if encoding == "tensor":
        for layer, spec in layers.items():
            out[layer + ".comfy_quant"] = torch.tensor(list(json.dumps(spec).encode()), dtype=torch.uint8)
    else:
        metadata = {"_quantization_metadata": json.dumps({"layers": layers})}
    return save(out, path, metadata)


def write_diffusers(folder: Path, weights: dict) -> Path:
    """diffusers ``transformer/`` folder: config.json + one ``diffusion_pytorch_model.safetensors``; names from
    the rule-by-rule table of the parity tests, independent of the loader's own table."""
    save({official_to_diffusers(k): v for k, v in weights.items()}, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel",
                                                    "_diffusers_version": "0.35.0", "num_layers": 2}))
    return folder


def write_split(folder: Path, weights: dict, with_index: bool = True) -> Path:
    """LightX2V split-by-block folder: ``non_block.safetensors`` + ``block_N.safetensors`` (+ index)."""
    groups: dict[str, dict] = {}
    for key, tensor in weights.items():
        name = f"block_{key.split('.')[1]}.safetensors" if key.startswith("blocks.") else "non_block.safetensors"
        groups.setdefault(name, {})[key] = tensor
    for name, tensors in groups.items():
        save(tensors, folder / name)
    if with_index:
        weight_map = {key: name for name, tensors in groups.items() for key in tensors}
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder
