"""Files -> tensors, in one place: every reader of the pack (DiT, umT5, CLIP, VAE, LoRA) opens its files here.

Entry point: `open_tensors(path)` -> a lazy `TensorView` (shapes, dtypes and metadata known before any data is read).
Safetensors headers are validated in full (`header`); ``.pth`` / ``.pt`` go through the tensors-only reader (`pth`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ...errors import MissingComponentError, ModelFormatError
from .boundary import boundary
from .pth import read_pth
from .source import SafetensorsSource
from .views import TensorEntry, TensorView, view_of_tensors

__all__ = ["PTH_SUFFIXES", "SAFETENSORS_SUFFIX", "TensorEntry", "TensorView", "open_tensors"]

SAFETENSORS_SUFFIX = ".safetensors"
PTH_SUFFIXES = (".pth", ".pt", ".ckpt")


@boundary("tensor file")
def open_tensors(path: str | Path | Sequence[Path] | Mapping[str, Path], *, name: str | None = None,
                 what: str = "model file") -> TensorView:
    """The tensors of one file, of several safetensors shards, or of a shard index's key -> file map.

    Args:
        path: a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.ckpt`` file; a list of safetensors shards (a key in two
            shards is an error); or key -> shard from an index.
        name: how messages refer to these tensors (default: the path).
        what: what the file should be, for the message when it is missing (``"VAE file"``, ``"LoRA file"``...).

    Raises:
        MissingComponentError: a single file that does not exist.
        ModelFormatError: an unreadable, corrupt or unsafe file, or a suffix that holds no tensors we read.
    """
    if isinstance(path, Mapping):
        source = SafetensorsSource(path, name or "shard index")
    elif isinstance(path, (list, tuple)):
        source = SafetensorsSource.from_files(list(path), name or str(path[0].parent if path else "no files"))
    else:
        path = Path(path)
        name = name or str(path)
        if not path.is_file():
            raise MissingComponentError(f"{name}: {what} not found")
        suffix = path.suffix.lower()
        if suffix in PTH_SUFFIXES:
            return view_of_tensors(read_pth(path), name)
        if suffix != SAFETENSORS_SUFFIX:
            raise ModelFormatError(f"{name}: unknown {what} type {suffix or 'without a suffix'!r}; Wan Express "
                                   f"reads {SAFETENSORS_SUFFIX} and {', '.join(PTH_SUFFIXES)} files")
        source = SafetensorsSource.from_files([path], name)
    return source.view()
