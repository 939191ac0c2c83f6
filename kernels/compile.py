"""Optional `torch.compile` of a Wan DiT: ``off``, ``block`` (every transformer block compiled; the blocks share one
graph) or ``full`` (the whole forward, one graph).

`compile_dit(model, mode)` compiles in place (parameters and state-dict keys unchanged) after fixing the kernel path
of every quantized layer on each device the model may run on (`quantized.prepare_paths`), so traced code reads
constants instead of probing devices. The kernels themselves are `custom_ops` ops, opaque to the compiler.
`warm_up(model, *inputs)` runs one eager forward: the "auto" GEMM backends are timed and kept there, the Triton
kernels built, the RoPE tables cached, so the first compiled call traces and runs nothing else.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import InvalidInputError
from .quantized import prepare_paths

logger = logging.getLogger(__name__)

COMPILE_MODES = ("off", "block", "full")
# Graphs dynamo may keep per compiled function before it gives up and runs it eagerly: one per resolution (and batch)
# a session runs, plus the dynamic-shape graph; the default (8) is reached by a few resolutions in one session.
RECOMPILE_LIMIT = 64


def _devices() -> list[torch.device]:
    return [torch.device("cpu")] + [torch.device("cuda", index) for index in range(torch.cuda.device_count())]


def compile_dit(model: nn.Module, mode: str, **options) -> nn.Module:
    """Compile ``model`` (a `WanDiT`) in place for ``mode`` (one of `COMPILE_MODES`) and return it.

    ``options`` go to `torch.compile` (e.g. ``backend``, ``mode``). A block-compiled model keeps its blocks as
    modules, so hosts that stream or move blocks keep working.
    """
    if mode not in COMPILE_MODES:
        raise InvalidInputError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode == "off":
        return model
    prepare_paths(model, _devices())
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    targets = list(model.blocks) if mode == "block" else [model]
    for module in targets:
        module.compile(**options)
    logger.info("torch.compile: %s (%d compiled module%s)", mode, len(targets), "s" if len(targets) > 1 else "")
    return model


@torch.no_grad()
def warm_up(model: nn.Module, *inputs, **kwargs):
    """One forward with compilation suspended (fixes the backends, builds kernels); returns its output."""
    with torch.compiler.set_stance("force_eager"):
        return model(*inputs, **kwargs)
