"""Safe reading of untrusted PyTorch ``.pth`` / ``.pt`` files: tensors only, no pickle code ever runs.

Entry point: `read_pth(path)` -> flat key -> tensor dict.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..errors import ModelFormatError

# Official and LightX2V checkpoints sometimes wrap the weights one level deep.
_WRAPPER_KEYS = ("state_dict", "model", "module")


def read_pth(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.pth`` with ``torch.load(weights_only=True)``; refuse anything that is not plain tensors.

    A pickle that would import or call arbitrary objects (e.g. ``os.system`` in ``__reduce__``) is rejected by the
    weights-only unpickler before anything executes.
    """
    path = Path(path)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFormatError(
            f"{path}: refused to load: not a plain tensor checkpoint, or corrupt ({first_line}). Only files holding "
            "tensors are read; pickled code is never executed") from None
    for key in _WRAPPER_KEYS:
        if isinstance(data, dict) and len(data) == 1 and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelFormatError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return {str(key): tensor for key, tensor in data.items()}
