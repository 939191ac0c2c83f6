"""A lazy, read-only key -> tensor mapping whose shapes and dtypes are known before any data is read.

`TensorView` is what the loaders hand to the model: each entry knows its final shape and dtype and how to produce
its tensor (read from disk, renamed, reshaped, quantized...) only when asked, one tensor at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Mapping

import torch


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One tensor not yet read: its shape and dtype, and the function that produces it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]


class TensorView(Mapping[str, torch.Tensor]):
    """Tensors produced on demand from `TensorEntry` recipes.

    Args:
        entries: key -> recipe, in the order the keys should be listed.
        name: the file or folder these tensors come from (for messages).
        metadata: the files' string metadata (safetensors ``__metadata__``; empty for ``.pth``).
    """

    def __init__(self, entries: Mapping[str, TensorEntry], name: str, metadata: Mapping[str, str] | None = None):
        self.entries = dict(entries)
        self.name = name
        self.metadata = dict(metadata or {})

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.entries[key].read()

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """key -> shape without reading data."""
        return {key: entry.shape for key, entry in self.entries.items()}

    def dtypes(self) -> dict[str, torch.dtype]:
        """key -> dtype without reading data."""
        return {key: entry.dtype for key, entry in self.entries.items()}


def view_of_tensors(tensors: Mapping[str, torch.Tensor], name: str) -> TensorView:
    """A view over tensors already in memory (e.g. read from a ``.pth`` with memory mapping)."""
    return TensorView({key: TensorEntry(tuple(t.shape), t.dtype, lambda t=t: t) for key, t in tensors.items()},
                      name)
