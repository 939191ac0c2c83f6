"""One error boundary for every public loader: bad input ends as the pack's own error naming the file, never as a
foreign exception from deep inside a parser.

Entry points: `@boundary(what)` on a loader whose first argument (or ``path``) is the file or folder it reads, and
`shown(path)`, how messages name a file (from the ComfyUI ``models`` folder down, else the bare name).
"""

from __future__ import annotations

import functools
import inspect
import logging
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from ...errors import MissingComponentError, ModelFormatError, WanExpressError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

MODELS_FOLDER = "models"

# Exceptions that parsers, struct, zip, pickle and torch raise on malformed bytes. Anything else (interrupts from a
# host, KeyboardInterrupt, MemoryError, CUDA out-of-memory) passes through untouched: it is not a property of the file.
FOREIGN: tuple[type[BaseException], ...] = (
    ArithmeticError, AssertionError, AttributeError, EOFError, LookupError, NotImplementedError, OSError,
    RecursionError, RuntimeError, TypeError, ValueError, struct.error, zipfile.BadZipFile, zipfile.LargeZipFile,
    pickle.UnpicklingError,
)
PASS_THROUGH: tuple[type[BaseException], ...] = (MemoryError, torch.OutOfMemoryError)

# Plain words per foreign exception class (first match wins). The foreign message is never shown: it can quote
# bytes of the file (a key, a pickled name, a JSON fragment).
_PROBLEMS: tuple[tuple[type[BaseException], str], ...] = (
    (RecursionError, "its structure is nested too deeply"),
    (UnicodeError, "it holds text that is not valid UTF-8"),
    (OverflowError, "it holds a number too large to use"),
    (ZeroDivisionError, "a size in it is zero where a positive size is needed"),
    (FileNotFoundError, "a file it needs does not exist"),
    (OSError, "it could not be read"),
    ((pickle.UnpicklingError, zipfile.BadZipFile, EOFError), "its archive or pickle data is damaged"),
    ((KeyError, IndexError), "an entry it needs is missing or has the wrong number of dimensions"),
    (NotImplementedError, "it holds data of a kind Wan Express cannot read"),
    ((TypeError, AttributeError), "a value in it has the wrong type"),
    (RuntimeError, "its tensors have dtypes or shapes that do not fit together"),
    (Exception, "it is malformed"),
)


def shown(path: str | Path) -> str:
    """How a message names ``path``: from the last ``models`` folder down (``models/vae/x.safetensors``, as ComfyUI
    users know it), else the bare name. Never a machine path."""
    parts = Path(path).parts
    if MODELS_FOLDER in parts[:-1]:
        start = len(parts) - 1 - parts[::-1].index(MODELS_FOLDER)
        return "/".join(parts[start:])
    return Path(path).name or str(path)


def problem_of(error: BaseException) -> str:
    """What a foreign exception says about the file, in words, without its message."""
    return next(words for kind, words in _PROBLEMS if isinstance(error, kind))


def boundary(what: str, path_argument: str = "path") -> Callable[[F], F]:
    """Decorate a public loader so every failure on bad input becomes a `WanExpressError` naming the file.

    Args:
        what: what the file should be (``"DiT model"``, ``"LoRA"``...), for the message.
        path_argument: the parameter holding the file or folder (default ``path``; else the first argument).

    Our own errors pass unchanged (they already name file and key); a foreign exception from `FOREIGN` becomes a
    `ModelFormatError` (a missing file: `MissingComponentError`) with the cause in words; `PASS_THROUGH` exceptions
    and everything else (interrupts) are re-raised as they are.
    """

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def guarded(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except (WanExpressError, *PASS_THROUGH):
                raise
            except FOREIGN as error:
                path = _path_of(signature, path_argument, args, kwargs)
                log.debug("%s: %s failed on bad input", shown(path), function.__qualname__, exc_info=True)
                kind = MissingComponentError if isinstance(error, FileNotFoundError) else ModelFormatError
                raise kind(f"{shown(path)}: not a readable {what}: {problem_of(error)} ({type(error).__name__}); "
                           "the file is damaged or not what this loader reads") from None

        return guarded  # type: ignore[return-value]

    return decorate


def _path_of(signature: inspect.Signature, name: str, args: tuple, kwargs: dict) -> object:
    try:
        bound = signature.bind_partial(*args, **kwargs).arguments
    except TypeError:
        bound = {}
    if name in bound:
        return bound[name]
    return args[0] if args else "input"
