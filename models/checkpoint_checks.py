"""Checks of a checkpoint against the network it should build, from headers only, before any weight is read.

- `count_blocks(shapes, pattern, needed, source, what)`: how many blocks a checkpoint holds, read from its key
  indices (``blocks.N.…``) but bounded by the tensors present: one hostile key (``blocks.1000000.x``) must not make
  a builder allocate a million blocks, so every index from 0 to the highest must carry each of the block's
  ``needed`` tensors, with the shapes of block 0 and no zero size.
- `check_dtypes(model, state_dict, source, what)`: stored dtypes fit the parameters of a network built on the meta
  device (no integer or bool tensor where a float weight belongs).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import ModelFormatError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def count_blocks(shapes: Mapping[str, tuple[int, ...]], pattern: re.Pattern, needed: Sequence[str], source: str,
                 what: str) -> int:
    """The number of blocks: ``1 + the highest index`` that ``pattern`` (group 1: the index) finds in the keys.

    Args:
        shapes: key -> shape, from the file's header.
        pattern: matches a block key, the index in group 1 (``^blocks\\.(\\d+)\\.``).
        needed: key suffixes each block must hold (``attn.q.weight``), after ``<prefix>N.``.
        source: the file, for messages; what: the network (``"umT5 encoder"``).

    Raises:
        ModelFormatError: no block, a gap in the indices, a block without one of ``needed``, or a block whose
            tensors differ in shape from block 0's or hold a zero size.
    """
    indices: set[int] = set()
    prefix = None
    for key in shapes:
        found = pattern.match(key)
        if found:
            indices.add(int(found.group(1)))
            prefix = prefix or key[:found.start(1)]
    if not indices:
        raise ModelFormatError(f"{source}: no {what} blocks in it; is this a {what} file?")
    count = max(indices) + 1
    if count != len(indices):
        missing = min(set(range(count)) - indices)
        raise ModelFormatError(f"{source}: {what} block indices run to {count - 1} but block {missing} is absent; "
                               "the file is incomplete or damaged")
    reference = [shapes.get(f"{prefix}0.{suffix}") for suffix in needed]
    for suffix, shape in zip(needed, reference):
        if shape is None:
            raise ModelFormatError(f"{source}: {what} tensor {prefix}0.{suffix!s} is missing")
        if 0 in shape:
            raise ModelFormatError(f"{source}: {what} tensor {prefix}0.{suffix} has a zero size {tuple(shape)}")
    for index in range(1, count):
        for suffix, shape in zip(needed, reference):
            key = f"{prefix}{index}.{suffix}"
            if key not in shapes:
                raise ModelFormatError(f"{source}: {what} tensor {key} is missing")
            if tuple(shapes[key]) != tuple(shape):
                raise ModelFormatError(f"{source}: {what} tensor {key} has shape {tuple(shapes[key])}, block 0 has "
                                       f"{tuple(shape)}")
    return count


def tensor_dtypes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.dtype]:
    """key -> dtype; lazy sources answer from file headers (their ``dtypes()``) without reading data."""
    if hasattr(state_dict, "dtypes"):
        return state_dict.dtypes()
    return {key: tensor.dtype for key, tensor in state_dict.items()}


def check_dtypes(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """Refuse stored dtypes that cannot become ``model``'s parameters: a float parameter needs a float16/bfloat16/
    float32/float64 tensor, a quantized code parameter (int8, fp8) exactly its own dtype.

    Raises:
        ModelFormatError: naming the first key that does not fit, its dtype and the one expected.
    """
    dtypes = tensor_dtypes(state_dict)
    for key, param in model.state_dict(keep_vars=True).items():
        stored = dtypes.get(key)
        if stored is None:
            continue  # reported with every other missing key by `assign_weights`
        if param.dtype in FLOAT_DTYPES:
            fits = stored in FLOAT_DTYPES
        else:
            fits = stored == param.dtype
        if not fits:
            expected = "a float dtype" if param.dtype in FLOAT_DTYPES else str(param.dtype).removeprefix("torch.")
            raise ModelFormatError(f"{source}: tensor {key} of {what} is stored as "
                                   f"{str(stored).removeprefix('torch.')}; it needs {expected}")
