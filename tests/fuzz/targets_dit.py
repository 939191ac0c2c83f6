"""Fuzz targets of the DiT side: safetensors headers, DiT files, sharded folders and indexes, quantized layouts,
LightX2V configs, inspect, convert and the DiT loader's widget values.

Each target is a ``make_case(rng, folder) -> args`` writing one hostile input, built from tiny valid files of the
test writers (`tests.loader_files`) and mutated, and a ``load(*args)`` calling the public loader. `TARGETS` lists
them for `test_fuzz_dit` and `long_run`.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import torch

from wan_express.loaders.files import open_tensors
from wan_express.loaders.files.header import _DTYPE_NAMES

from .mutations import mutate_header

_NAME_OF_DTYPE = {getattr(torch, name): code for code, name in _DTYPE_NAMES.items() if hasattr(torch, name)}


def header_and_data(tensors: dict[str, torch.Tensor]) -> tuple[dict, bytes]:
    """A safetensors header dict and data section for ``tensors``, laid out in order (what `save_file` writes)."""
    header, chunks, offset = {}, [], 0
    for key, tensor in tensors.items():
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[key] = {"dtype": _NAME_OF_DTYPE[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    return header, b"".join(chunks)


@functools.lru_cache(maxsize=None)
def _small_tensors() -> tuple[dict, bytes]:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(2, 3, generator=generator),
        "b.bias": torch.randn(4, generator=generator).bfloat16(),
        "c.codes": torch.randint(-128, 127, (2, 2), generator=generator, dtype=torch.int8),
        "d.fp8": torch.randn(3, generator=generator).to(torch.float8_e4m3fn),
        "e.scalar": torch.tensor(1.5),
        "f.empty": torch.zeros(0, 4),
    }
    return header_and_data(tensors)


def make_safetensors_case(rng: random.Random, folder: Path) -> tuple:
    header, data = _small_tensors()
    path = folder / "weights.safetensors"
    path.write_bytes(mutate_header(rng, header, data))
    return (path,)


def read_every_tensor(path: Path) -> list[torch.Tensor]:
    """Open a safetensors file and read each tensor, keeping them all, as a model build does."""
    view = open_tensors(path)
    return [view[key] for key in view]


TARGETS = {
    "safetensors_header": (make_safetensors_case, read_every_tensor),
}
