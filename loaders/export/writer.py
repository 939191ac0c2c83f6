"""Writing a DiT as one safetensors file in a LightX2V or ComfyUI layout, streamed tensor by tensor.

Entry points: `write_dit(path, tensors, fmt, metadata)`, and `read_export_metadata` for the loader to read it back. ``tensors`` are float, official-named and read lazily; each
is converted (bf16, or quantized with `kernels.quantize.quantize_weight` for the layers LightX2V's converter
quantizes, spec formats.md §4.1) and written at an offset planned from the shapes alone, so memory holds one layer at
a time. The file is written under a temporary name and renamed at the end: an interrupted export leaves no half file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Callable, Mapping

import torch

from ...errors import ModelFormatError
from ...kernels.quantize import quantize_weight
from ...kernels.quantized import QuantScheme
from ...models.weights import tensor_shapes
from ..dit.exported import METADATA_PREFIX
from ..dit.quant_targets import is_quantization_target
from ..files.header import DTYPES, METADATA_KEY
from ..quantization import SCALED_FP8_MARKER

SAFETENSORS_DTYPE = {dtype: name for name, dtype in DTYPES.items()}
# Every tensor that is not quantized is written in bf16, as LightX2V's published files are (formats.md §4.2).
FLOAT_DTYPE = torch.bfloat16

@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One output layout.

    Attributes:
        description: for the CLI help.
        scheme: how the converter's target layers are quantized; None writes every tensor in bf16.
        scale_suffix: name of the scale tensor beside ``<layer>.weight``.
        scalar_scale: the scale is a 0-D tensor (legacy ComfyUI scaled FP8) instead of ``[out, 1]``.
        marker: write the top-level 2-element ``scaled_fp8`` tensor that tells ComfyUI core the file is scaled
            FP8 (and to dequantize before a bf16/fp16 matmul).
    """

    description: str
    scheme: QuantScheme | None = None
    scale_suffix: str = ".weight_scale"
    scalar_scale: bool = False
    marker: bool = False


EXPORT_FORMATS = {
    "lightx2v-bf16": ExportFormat("LightX2V single file, every tensor bf16"),
    "lightx2v-fp8": ExportFormat("LightX2V scaled FP8 E4M3, one fp32 weight_scale [out,1] per output channel",
                                 QuantScheme("fp8_e4m3", "channel")),
    "lightx2v-int8": ExportFormat("LightX2V INT8, one fp32 weight_scale [out,1] per output channel",
                                  QuantScheme("int8", "channel")),
    "comfy-fp8": ExportFormat("ComfyUI scaled FP8 E4M3: per-tensor scale_weight scalars and the scaled_fp8 marker",
                              QuantScheme("fp8_e4m3", "tensor"), scale_suffix=".scale_weight", scalar_scale=True,
                              marker=True),
}


@dataclasses.dataclass
class _Planned:
    """One output tensor: its place in the file and which computation produces it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int = 0

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _plan(shapes: Mapping[str, tuple[int, ...]], export: ExportFormat) -> tuple[dict[str, list[_Planned]], int]:
    """Source key -> the output tensors made from it, with byte offsets; and the data size.

    Offsets follow dtype width, widest first, so every tensor starts aligned to its element size (the header is
    padded to 8 bytes), which zero-copy readers need.
    """
    outputs: dict[str, list[_Planned]] = {}
    for key, shape in shapes.items():
        if export.scheme is not None and is_quantization_target(key, shape):
            layer = key.removesuffix(".weight")
            scale_shape = () if export.scalar_scale else export.scheme.scale_shape(shape[0])
            outputs[key] = [_Planned(key, export.scheme.dtype, shape),
                            _Planned(layer + export.scale_suffix, torch.float32, scale_shape)]
        else:
            outputs[key] = [_Planned(key, FLOAT_DTYPE, shape)]
    if export.marker:
        outputs[SCALED_FP8_MARKER] = [_Planned(SCALED_FP8_MARKER, torch.float8_e4m3fn, (2,))]
    ordered = sorted((p for group in outputs.values() for p in group), key=lambda p: (-p.dtype.itemsize, p.name))
    offset = 0
    for planned in ordered:
        planned.begin = offset
        offset += planned.nbytes
    return outputs, offset


def _header(outputs: dict[str, list[_Planned]], metadata: Mapping[str, str]) -> bytes:
    entries: dict[str, object] = {METADATA_KEY: dict(metadata)}
    for planned in sorted((p for group in outputs.values() for p in group), key=lambda p: p.begin):
        entries[planned.name] = {"dtype": SAFETENSORS_DTYPE[planned.dtype], "shape": list(planned.shape),
                                 "data_offsets": [planned.begin, planned.begin + planned.nbytes]}
    header = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    return header + b" " * (-len(header) % 8)


def _convert(tensors: Mapping[str, torch.Tensor], key: str, planned: list[_Planned],
             export: ExportFormat) -> list[torch.Tensor]:
    """The output tensors planned for source ``key``, checked against the plan."""
    if key == SCALED_FP8_MARKER and export.marker:
        return [torch.zeros(2, dtype=torch.float8_e4m3fn)]  # only its dtype and size carry meaning
    tensor = tensors[key]
    if tuple(tensor.shape) != planned[0].shape:
        raise ModelFormatError(f"{key}: the tensor read has shape {tuple(tensor.shape)} but its source announced "
                               f"{planned[0].shape}")
    if len(planned) == 1:
        return [tensor.to(FLOAT_DTYPE)]
    codes, scale = quantize_weight(tensor, export.scheme)
    return [codes, scale.reshape(planned[1].shape)]


def write_dit(path: str | Path, tensors: Mapping[str, torch.Tensor], fmt: str, metadata: Mapping[str, str],
              progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Write ``tensors`` (float, official names) to ``path`` in layout ``fmt`` (a key of `EXPORT_FORMATS`).

    Args:
        path: the ``.safetensors`` file to create (replaced atomically if it exists).
        tensors: key -> float tensor; read once each, in key order. A ``shapes()`` method, if present, is used to
            plan the file without reading data.
        fmt: output layout.
        metadata: written under ``__metadata__`` with keys prefixed ``wan_express.`` (plus ``format: pt``).
        progress: called as ``progress(done, total)`` after each source tensor.

    Returns:
        ``{"tensors": n, "bytes": file size}``.
    """
    export = EXPORT_FORMATS[fmt]
    path = Path(path)
    outputs, data_size = _plan(tensor_shapes(tensors), export)
    header = _header(outputs, {"format": "pt", **{METADATA_PREFIX + k: v for k, v in metadata.items()},
                               METADATA_PREFIX + "layout": fmt})
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(temporary, "wb") as handle:
            handle.write(len(header).to_bytes(8, "little"))
            handle.write(header)
            handle.truncate(8 + len(header) + data_size)
            data_start = 8 + len(header)
            keys = list(outputs)
            for done, key in enumerate(keys, 1):
                for planned, produced in zip(outputs[key], _convert(tensors, key, outputs[key], export)):
                    handle.seek(data_start + planned.begin)
                    handle.write(produced.contiguous().reshape(-1).view(torch.uint8).numpy())
                if progress is not None:
                    progress(done, len(keys))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return {"tensors": sum(len(group) for group in outputs.values()), "bytes": path.stat().st_size}
