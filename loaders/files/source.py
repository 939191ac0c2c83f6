"""Lazy, read-only access to the tensors of one or more safetensors files (shards) under one key space.

`SafetensorsSource` validates every header it opens (`header`), answers shapes and metadata (and, through
`view()`, dtypes) from the headers alone, and reads a tensor only when it is asked for, so a model is built one
tensor at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping

import torch

from ...errors import ModelFormatError
from .header import SafetensorsHeader, read_header, read_tensor
from .views import TensorEntry, TensorView


class SafetensorsSource(Mapping[str, torch.Tensor]):
    """Tensors of several safetensors files under one key space.

    Args:
        key_files: key -> file holding it (e.g. from a shard index). Headers are read lazily, once per file.
        name: how errors refer to this source (a folder or file name).
    """

    def __init__(self, key_files: Mapping[str, Path], name: str):
        self.name = name
        self._key_files = dict(key_files)
        self._headers: dict[Path, SafetensorsHeader] = {}

    @classmethod
    def from_files(cls, files: list[Path], name: str) -> "SafetensorsSource":
        """All keys of the given files; a key present in two files is an error, never a silent overwrite."""
        key_files: dict[str, Path] = {}
        source = cls({}, name)
        for file in files:
            for key in source.header(file).tensors:
                if key in key_files:
                    raise ModelFormatError(f"{name}: tensor {key!r} is in both {key_files[key].name} and {file.name}")
                key_files[key] = file
        source._key_files = key_files
        return source

    def header(self, file: Path) -> SafetensorsHeader:
        """The validated header of one of this source's files."""
        if file not in self._headers:
            if not file.is_file():
                raise ModelFormatError(f"{self.name}: shard {file.name} is missing")
            self._headers[file] = read_header(file)
        return self._headers[file]

    @property
    def files(self) -> list[Path]:
        """The files this source reads, in first-use order."""
        return list(dict.fromkeys(self._key_files.values()))

    def _header_holding(self, key: str) -> SafetensorsHeader:
        file = self._key_files[key]
        header = self.header(file)
        if key not in header.tensors:
            raise ModelFormatError(f"{self.name}: the index puts {key!r} in {file.name}, which does not hold it")
        return header

    def __getitem__(self, key: str) -> torch.Tensor:
        return read_tensor(self._header_holding(key), key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._key_files)

    def __len__(self) -> int:
        return len(self._key_files)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """key -> shape, from the headers only."""
        return {key: self._header_holding(key).tensors[key].shape for key in self._key_files}

    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` entries of every file, merged (shards of one model carry the same ones)."""
        merged: dict[str, str] = {}
        for file in self.files:
            merged.update(self.header(file).metadata)
        return merged

    def view(self) -> TensorView:
        """The same tensors as a `TensorView` (shapes and dtypes from the headers)."""
        entries = {}
        for key in self._key_files:
            info = self._header_holding(key).tensors[key]
            entries[key] = TensorEntry(info.shape, info.dtype, lambda key=key: self[key])
        return TensorView(entries, self.name, self.metadata())
