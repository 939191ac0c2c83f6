"""Lazy, read-only access to the tensors of one or more safetensors files (shards).

`SafetensorsSource` maps key -> tensor but reads a tensor only when it is asked for, and answers shapes and
dtypes from the headers alone, so a model is built one tensor at a time without a full copy in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import safe_open

from ..errors import ModelFormatError


class SafetensorsSource(Mapping[str, torch.Tensor]):
    """Tensors of several safetensors files under one key space.

    Args:
        key_files: key -> file holding it (e.g. from a shard index). Every file is opened once, lazily.
        name: how errors refer to this source (a folder or file name).
    """

    def __init__(self, key_files: Mapping[str, Path], name: str):
        self.name = name
        self._key_files = dict(key_files)
        self._handles: dict[Path, object] = {}

    @classmethod
    def from_files(cls, files: list[Path], name: str) -> "SafetensorsSource":
        """All keys of the given files; a key present in two files is an error, never a silent overwrite."""
        key_files: dict[str, Path] = {}
        source = cls({}, name)
        for file in files:
            for key in source._handle(file).keys():
                if key in key_files:
                    raise ModelFormatError(f"{name}: tensor {key!r} is in both {key_files[key].name} and {file.name}")
                key_files[key] = file
        source._key_files = key_files
        return source

    def _handle(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(str(file), framework="pt", device="cpu")
            except FileNotFoundError:
                raise ModelFormatError(f"{self.name}: shard {file.name} is missing") from None
            except Exception as error:  # safetensors raises its own types for a bad header
                raise ModelFormatError(f"{file}: not a readable safetensors file ({error})") from None
        return self._handles[file]

    def _handle_holding(self, key: str):
        file = self._key_files[key]
        handle = self._handle(file)
        if key not in handle.keys():
            raise ModelFormatError(f"{self.name}: the index puts {key!r} in {file.name}, which does not hold it")
        return handle

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._handle_holding(key).get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._key_files)

    def __len__(self) -> int:
        return len(self._key_files)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """key -> shape, from the headers only."""
        return {key: tuple(self._handle_holding(key).get_slice(key).get_shape()) for key in self._key_files}
