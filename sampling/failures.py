"""What a failed run leaves behind: a CUDA out-of-memory becomes `OutOfGpuMemoryError` naming the remedies, and any
failure (an interrupt included) drops the aborted run's tensors and returns the cached GPU memory. A host's own
exception (ComfyUI's interrupt) keeps its traceback: what torch's call closures still hold in it goes when the host
has handled it.

Entry point: `guarded(what, function, *args, **kwargs)`; the cached models themselves are never touched, so the
next run uses them as they are.
"""

from __future__ import annotations

import logging
import traceback
from typing import Callable, TypeVar

import torch

from ..errors import OutOfGpuMemoryError, WanExpressError

log = logging.getLogger(__name__)

T = TypeVar("T")

REMEDIES = ("load the DiT with quantization fp8 or int8, set a VRAM budget (vram_budget_gb / offload) so weights "
            "stream from host memory, generate fewer frames, or a smaller width x height")


def out_of_memory_message(what: str, error: BaseException) -> str:
    """The sentence shown for an out-of-memory during ``what`` (e.g. ``"sampling"``, ``"loading the DiT"``)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
    return f"the GPU ran out of memory while {what} ({first}); to fit: {REMEDIES}"


def release_memory() -> None:
    """Give the CUDA caching allocator's free blocks back (no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def guarded(what: str, function: Callable[..., T], *args, **kwargs) -> T:
    """``function(*args, **kwargs)``; on failure the frames it left (and their tensors) are cleared and the GPU cache
    emptied before the error goes on; a `torch.OutOfMemoryError` goes on as `OutOfGpuMemoryError`."""
    try:
        return function(*args, **kwargs)
    except torch.OutOfMemoryError as error:
        message = out_of_memory_message(what, error)
        traceback.clear_frames(error.__traceback__)
    except WanExpressError as error:  # ours say what happened: the frames below (closures included) can go
        traceback.clear_frames(error.__traceback__)
        error.with_traceback(None)
        release_memory()
        raise
    except BaseException as error:  # anything else keeps its line numbers; its frames' locals go
        traceback.clear_frames(error.__traceback__)
        release_memory()
        raise
    release_memory()  # outside the handler: the OOM and its frames are gone
    log.error(message)
    raise OutOfGpuMemoryError(message)
