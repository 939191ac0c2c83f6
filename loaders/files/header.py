"""Validated reading of safetensors files: the header is checked in full before any tensor data is trusted.

`read_header(path)` -> `SafetensorsHeader` (names, dtypes, shapes, byte ranges, metadata); `read_tensor(header, key)`
reads one tensor with a positioned file read, so memory grows by that tensor only (no file-wide mapping stays
resident). Every error names the file the way every loader does (`boundary.shown`: from ``models/`` down, else
the bare name) and, where there is one, the tensor.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path

import torch

from ...errors import ModelFormatError
from .boundary import shown
from .json_files import parse_json

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
MAX_RANK = 8  # no network here stores tensors of more dimensions (Conv3d weights are 5-D)
_MAX_KEY_SHOWN = 120


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

    Checks, before anything is allocated: the 8-byte length and the header fit in the file; the header is a JSON
    object (nesting, huge integers and non-finite numbers refused by the parser); every tensor has a known dtype,
    a shape of non-negative integers whose element count the file can hold, and a byte range whose length equals
    ``numel * itemsize``; the ranges, sorted, are contiguous, never overlap and cover the data section exactly (so
    no bytes are aliased under two tensors and none are left unexplained).

    Raises:
        ModelFormatError: naming the file (and tensor) and what is wrong.
    """
    path = Path(path)
    name = shown(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelFormatError(f"{name}: truncated: {size} bytes, too short for a safetensors header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise ModelFormatError(
                    f"{name}: truncated or not a safetensors file: the header claims {length} bytes but the file "
                    f"has {size - 8} after the length field")
            raw = handle.read(length)
    except FileNotFoundError:
        raise ModelFormatError(f"{name}: no such file") from None
    try:
        entries = parse_json(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelFormatError(f"{name}: the safetensors header is not valid JSON (or holds values no header "
                               "holds); the file is corrupt or not a safetensors file") from None
    if not isinstance(entries, dict):
        raise ModelFormatError(f"{name}: the safetensors header is not a JSON object")
    metadata = entries.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFormatError(f"{name}: the header's {METADATA_KEY} is not a map of strings")
    data_size = size - 8 - length
    tensors = {key: _tensor_info(name, key, entry, data_size) for key, entry in entries.items()}
    _check_layout(name, tensors, data_size)
    return SafetensorsHeader(path=path, tensors=tensors, metadata=metadata, data_start=8 + length)


def _check_layout(name: str, tensors: dict[str, TensorInfo], data_size: int) -> None:
    """Ranges sorted by start must tile ``[0, data_size)``: no gap, no overlap, nothing after the last tensor."""
    position = 0
    for key, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != position:
            problem = "overlaps another tensor" if info.begin < position else "leaves a gap before it"
            raise ModelFormatError(f"{name}: tensor {_key_shown(key)!r}: its data range {problem}; the header is "
                                   "corrupt (tensor data must be stored back to back)")
        position = info.end
    if position != data_size:
        raise ModelFormatError(f"{name}: the tensors hold {position} bytes but the data section has {data_size}; "
                               "the file is truncated, padded or corrupt")


def _tensor_info(name: str, key: str, entry: object, data_size: int) -> TensorInfo:
    where = f"{name}: tensor {_key_shown(key)!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise ModelFormatError(f"{where}: header entry lacks dtype, shape or data_offsets")
    dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise ModelFormatError(f"{where}: unknown dtype {_value_shown(entry['dtype'])} (known: {', '.join(DTYPES)})")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(type(d) is int and 0 <= d <= data_size for d in shape)):
        raise ModelFormatError(f"{where}: shape {_value_shown(shape)} is not a list of at most {MAX_RANK} non-negative "
                               "sizes this file can hold")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise ModelFormatError(f"{where}: data_offsets {_value_shown(offsets)} are not an ordered pair of byte offsets")
    if offsets[1] > data_size:
        raise ModelFormatError(f"{where}: data_offsets {offsets} run past the end of the data section "
                               f"({data_size} bytes); the file is truncated or corrupt")
    expected = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != expected:
        raise ModelFormatError(f"{where}: shape {shape} of {entry['dtype']} needs {expected} bytes but its data "
                               f"range holds {offsets[1] - offsets[0]}")
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def _key_shown(key: str) -> str:
    """A tensor name as messages show it: cut when over-long (a hostile header can hold megabyte keys)."""
    return key if len(key) <= _MAX_KEY_SHOWN else key[:_MAX_KEY_SHOWN] + "..."


def _value_shown(value: object) -> str:
    """A header value in a message: short ones as they are, long ones by their type (never a wall of file text)."""
    text = repr(value) if isinstance(value, (str, int, float, list, type(None))) else type(value).__name__
    return text if len(text) <= 40 else f"(a {type(value).__name__} of {len(text)} characters)"


def read_tensor(header: SafetensorsHeader, key: str) -> torch.Tensor:
    """Read one tensor from disk into a fresh CPU tensor (one positioned read of its bytes)."""
    info = header.tensors[key]
    data = torch.empty(info.end - info.begin, dtype=torch.uint8)
    with open(header.path, "rb") as handle:
        handle.seek(header.data_start + info.begin)
        got = handle.readinto(memoryview(data.numpy()))
    if got != info.end - info.begin:
        raise ModelFormatError(f"{shown(header.path)}: tensor {_key_shown(key)!r}: file ended after {got} of "
                               f"{info.end - info.begin} bytes (was it modified while loading?)")
    if info.dtype == torch.bool:
        return data.view(torch.bool).reshape(info.shape)
    return data.view(info.dtype).reshape(info.shape)
