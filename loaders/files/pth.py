"""Safe reading of untrusted PyTorch ``.pth`` / ``.pt`` files: tensors only, no pickle code ever runs.

Entry point: `read_pth(path)` -> flat key -> tensor dict.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ...errors import MissingComponentError, ModelFormatError
from .boundary import boundary, shown

# Official and LightX2V checkpoints sometimes wrap the weights one level deep.
_WRAPPER_KEYS = ("state_dict", "model", "module")


def _is_tensor_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _torch_load(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        # files written with the legacy (non-zip) serialization cannot be memory-mapped
        return torch.load(str(path), map_location="cpu", weights_only=True)


@boundary("PyTorch checkpoint (.pth)")
def read_pth(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.pth`` with ``torch.load(weights_only=True)``; refuse anything that is not plain tensors.

    A pickle that would import or call arbitrary objects (e.g. ``os.system`` in ``__reduce__``) is rejected by the
    weights-only unpickler before anything executes. Training checkpoints that wrap the weights in a
    ``state_dict`` / ``model`` / ``module`` entry (beside e.g. an epoch counter) are unwrapped. Every other failure
    of a damaged archive (bad zip names, truncation, random opcodes) becomes a `ModelFormatError` naming the file
    (`boundary`); messages never quote the file's bytes.
    """
    path = Path(path)
    name = shown(path)
    try:
        data = _torch_load(path)
    except FileNotFoundError:
        raise MissingComponentError(f"{name}: no such file") from None
    except MemoryError:
        # a length field of a damaged pickle (a string "of 2 GiB" in a 1 KB file) is allocated before it is read
        raise ModelFormatError(f"{name}: reading it asked for more memory than is free: a size inside it is damaged, "
                               "or the checkpoint does not fit in RAM") from None
    except pickle.UnpicklingError:
        raise ModelFormatError(
            f"{name}: refused to load: not a plain tensor checkpoint (it holds pickled objects other than tensors, "
            "or its pickle data is damaged). Only files holding tensors are read; pickled code is never "
            "executed") from None
    if isinstance(data, dict) and not _is_tensor_dict(data):
        wrapped = next((data[key] for key in _WRAPPER_KEYS if _is_tensor_dict(data.get(key))), None)
        if wrapped is not None:
            data = wrapped
    if not _is_tensor_dict(data):
        found = (", ".join(f"{str(key)[:40]!r}: {type(value).__name__}" for key, value in list(data.items())[:6])
                 if isinstance(data, dict) else type(data).__name__)
        raise ModelFormatError(f"{name}: expected a dict of tensors (or one under {', '.join(_WRAPPER_KEYS)}), "
                               f"found {found or 'an empty dict'}")
    for key, tensor in data.items():
        if not isinstance(key, str):
            raise ModelFormatError(f"{name}: a tensor in it is named by a {type(key).__name__}, not a string")
        if tensor.is_meta or tensor.layout != torch.strided:
            kind = "a meta tensor (shape only, no data)" if tensor.is_meta else f"a {tensor.layout} tensor"
            raise ModelFormatError(f"{name}: tensor {key} is {kind}; only dense tensors with data are read")
    return dict(data)
