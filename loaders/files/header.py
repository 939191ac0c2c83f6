"""Validated reading of safetensors files: the header is checked in full before any tensor data is trusted.

`read_header(path)` -> `SafetensorsHeader` (names, dtypes, shapes, byte ranges, metadata); `read_tensor(header, key)`
reads one tensor with a positioned file read, so memory grows by that tensor only (no file-wide mapping stays
resident). Every error names the file and, where there is one, the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import torch

from ...errors import ModelFormatError

# safetensors dtype names -> torch dtype names (the format's full list). Only those the installed torch has are
# readable (float8_e8m0fnu arrived in torch 2.7); the others are reported as unknown dtypes.
_DTYPE_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32", "U32": "uint32",
    "I64": "int64", "U64": "uint64", "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
}
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, torch_name) for name, torch_name in _DTYPE_NAMES.items() if hasattr(torch, torch_name)}

# The reference implementation refuses headers above 100 MB; a larger length means a corrupt file.
MAX_HEADER_BYTES = 100 * 1024 * 1024
METADATA_KEY = "__metadata__"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: dtype, shape and its byte range ``[begin, end)`` inside the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclasses.dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header of one file. ``data_start`` is the file offset of the data section."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header.

    Checks: the 8-byte length and the header fit in the file; the header is a JSON object; every tensor has a
    known dtype, a shape of non-negative integers and a byte range inside the data section whose length equals
    ``numel * itemsize``.

    Raises:
        ModelFormatError: naming the file (and tensor) and what is wrong.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelFormatError(f"{path}: truncated: {size} bytes, too short for a safetensors header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise ModelFormatError(
                    f"{path}: truncated or not a safetensors file: the header claims {length} bytes but the file "
                    f"has {size - 8} after the length field")
            raw = handle.read(length)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    try:
        entries = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"{path}: the safetensors header is not valid JSON ({error}); the file is corrupt "
                               "or not a safetensors file") from None
    if not isinstance(entries, dict):
        raise ModelFormatError(f"{path}: the safetensors header is not a JSON object")
    metadata = entries.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFormatError(f"{path}: the header's {METADATA_KEY} is not a map of strings")
    data_size = size - 8 - length
    tensors = {key: _tensor_info(path, key, entry, data_size) for key, entry in entries.items()}
    return SafetensorsHeader(path=path, tensors=tensors, metadata=metadata, data_start=8 + length)


def _tensor_info(path: Path, key: str, entry: object, data_size: int) -> TensorInfo:
    where = f"{path}: tensor {key!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise ModelFormatError(f"{where}: header entry lacks dtype, shape or data_offsets")
    dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise ModelFormatError(f"{where}: unknown dtype {entry['dtype']!r} (known: {', '.join(DTYPES)})")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ModelFormatError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise ModelFormatError(f"{where}: data_offsets {offsets!r} are not an ordered pair of byte offsets")
    if offsets[1] > data_size:
        raise ModelFormatError(f"{where}: data_offsets {offsets} run past the end of the data section "
                               f"({data_size} bytes); the file is truncated or corrupt")
    expected = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != expected:
        raise ModelFormatError(f"{where}: shape {shape} of {entry['dtype']} needs {expected} bytes but its data "
                               f"range holds {offsets[1] - offsets[0]}")
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def read_tensor(header: SafetensorsHeader, key: str) -> torch.Tensor:
    """Read one tensor from disk into a fresh CPU tensor (one positioned read of its bytes)."""
    info = header.tensors[key]
    data = torch.empty(info.end - info.begin, dtype=torch.uint8)
    with open(header.path, "rb") as handle:
        handle.seek(header.data_start + info.begin)
        got = handle.readinto(memoryview(data.numpy()))
    if got != info.end - info.begin:
        raise ModelFormatError(f"{header.path}: tensor {key!r}: file ended after {got} of "
                               f"{info.end - info.begin} bytes (was it modified while loading?)")
    if info.dtype == torch.bool:
        return data.view(torch.bool).reshape(info.shape)
    return data.view(info.dtype).reshape(info.shape)
