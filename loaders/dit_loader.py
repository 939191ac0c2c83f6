"""Load a Wan DiT from an official model folder (``config.json`` + sharded safetensors + index) or one file.

Entry point: `load_dit(path)`. Layout detection grows in the loaders issue; this module keeps the folder rules
of spec formats.md §3.3: read the index when present, never glob unrelated ``*.safetensors``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import MissingComponentError, ModelFormatError
from ..kernels.ops import TorchOps
from ..models import WanDiT
from .safetensors_source import SafetensorsSource

log = logging.getLogger(__name__)

INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
SHARD_GLOB = "diffusion_pytorch_model*.safetensors"
CONFIG_NAME = "config.json"


def open_official_folder(folder: Path) -> SafetensorsSource:
    """The DiT tensors of an official folder: the shards the index names, else every ``diffusion_pytorch_model*``."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ModelFormatError(f"{index}: not a shard index with a 'weight_map' ({error})") from None
        return SafetensorsSource({key: folder / shard for key, shard in weight_map.items()}, name=str(folder))
    shards = sorted(folder.glob(SHARD_GLOB))
    if not shards:
        raise MissingComponentError(
            f"{folder}: no DiT weights found (expected {INDEX_NAME} or {SHARD_GLOB})")
    return SafetensorsSource.from_files(shards, name=str(folder))


def read_config(folder: Path) -> dict | None:
    """The folder's ``config.json`` as a dict, or None when absent (the config is then inferred from tensors)."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelFormatError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: expected a JSON object")
    return data


def load_dit(path: str | Path, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
             ops: TorchOps | None = None) -> WanDiT:
    """Load a Wan DiT from an official folder or a single official-named ``.safetensors`` file.

    Args:
        path: model folder (``config.json`` optional) or one safetensors file.
        dtype: matmul weight dtype (bf16 or fp32); fp32 islands stay fp32.
        device: where the weights go; tensors are converted one at a time.
        ops: operations factory (default plain PyTorch).
    """
    path = Path(path)
    if path.is_dir():
        tensors, config = open_official_folder(path), read_config(path)
    elif path.is_file():
        tensors, config = SafetensorsSource.from_files([path], name=str(path)), None
    else:
        raise MissingComponentError(f"{path}: no such file or folder")
    model = WanDiT.from_state_dict(tensors, config=config, dtype=dtype, device=device, ops=ops, source=str(path))
    cfg = model.config
    log.info("Wan DiT from %s: %s, dim %d, %d blocks, %s on %s (config %s)", path.name, cfg.model_type, cfg.dim,
             cfg.num_layers, str(dtype).removeprefix("torch."), device, "from config.json" if config else "inferred")
    return model
