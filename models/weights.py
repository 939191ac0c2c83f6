"""Strict, tensor-by-tensor assignment of official-named weights to a network built on the meta device.

`assign_weights(model, state_dict, ...)` is how every network here is loaded: one error listing every missing,
unexpected and wrongly shaped key, then each tensor converted (dtype, device) and assigned as it is read, so a lazy
state dict never exists twice in memory.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

from ..errors import ModelFormatError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """key -> shape; lazy sources answer from file headers (their ``shapes()``) without reading data."""
    if hasattr(state_dict, "shapes"):
        return state_dict.shapes()
    return {key: tuple(tensor.shape) for key, tensor in state_dict.items()}


def _listed(label: str, keys: list[str]) -> str:
    return f"{label}: " + ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")


def check_shapes(expected: Mapping[str, tuple[int, ...]], shapes: Mapping[str, tuple[int, ...]], *, what: str,
                 source: str, ignore: re.Pattern | None = None) -> None:
    """Raise one `ModelFormatError` listing every missing, unexpected and wrongly shaped key of ``shapes`` (the
    file's) against ``expected`` (the network's key -> shape); ``what``, ``source`` and ``ignore`` as in
    `assign_weights`. Callers that know the network's shapes without building it check before the build."""
    missing = [key for key in expected if key not in shapes]
    unexpected = [key for key in shapes if key not in expected and not (ignore and ignore.search(key))]
    wrong_shape = [f"{key}: file {tuple(shapes[key])}, model {tuple(shape)}" for key, shape in expected.items()
                   if key in shapes and tuple(shapes[key]) != tuple(shape)]
    problems = [_listed(label, keys) for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
    if problems:
        raise ModelFormatError(f"{source} does not match {what}: " + "; ".join(problems))


def assign_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, dtype: torch.dtype,
                   device: torch.device | str, what: str, source: str,
                   shapes: Mapping[str, tuple[int, ...]] | None = None, keep_fp32: re.Pattern | None = None,
                   ignore: re.Pattern | None = None) -> nn.Module:
    """Check ``state_dict`` against ``model`` (built on the meta device), then convert and assign it.

    Args:
        what: the network, for the error ("a t2v Wan DiT (dim 5120, 40 blocks)").
        source: the file or folder, for the error.
        shapes: key -> shape when the caller already has them.
        keep_fp32: keys whose float tensors stay fp32 whatever ``dtype``; parameters a module lists in its
            ``KEEP_IN_FP32_PARAMS`` (e.g. quantization scales) stay fp32 too. Non-float tensors (codes) keep theirs.
        ignore: stored keys the network does not use (e.g. CLIP's last block); not reported as unexpected.

    Returns:
        the model, in eval mode without gradients.
    """
    shapes = tensor_shapes(state_dict) if shapes is None else shapes
    expected = model.state_dict(keep_vars=True)
    check_shapes({key: tuple(param.shape) for key, param in expected.items()}, shapes, what=what, source=source,
                 ignore=ignore)
    fp32_keys = {f"{prefix}.{param}" for prefix, module in model.named_modules()
                 for param in getattr(module, "KEEP_IN_FP32_PARAMS", ())}
    converted = {}
    for key, param in expected.items():
        tensor = state_dict[key]
        if tensor.dtype in FLOAT_DTYPES and param.dtype in FLOAT_DTYPES:
            fp32 = key in fp32_keys or (keep_fp32 is not None and keep_fp32.search(key))
            tensor = tensor.to(device=device, dtype=torch.float32 if fp32 else dtype)
        else:
            tensor = tensor.to(device=device)
        converted[key] = tensor
    model.load_state_dict(converted, strict=True, assign=True)
    return model.requires_grad_(False).eval()
