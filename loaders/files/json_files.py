"""JSON files that come with models (shard indexes, config.json, LightX2V configs), read defensively, and the paths
such files name, kept inside their folder.

Entry points: `read_json(path, what)` -> dict, `contained_path(folder, name, source)` -> Path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath, PureWindowsPath

from ...errors import MissingComponentError, ModelFormatError
from .boundary import shown

# A shard index of a 14B model is ~100 KB; a config a few KB.
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32
MAX_INT_DIGITS = 19  # int64
MAX_NAME_CHARS = 1024
MAX_PART_CHARS = 255


class _Refused(ValueError):
    """A value `read_json` refuses (raised from the parser hooks)."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused("an integer with more digits than any size or count")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("a number too large for a float")
    return value


def _parse_constant(text: str) -> float:
    raise _Refused(f"{text}, which is not a JSON number")


def read_json(path: str | Path, what: str) -> dict:
    """The JSON object in ``path`` (``what`` it should be, for messages: ``"shard index"``, ``"config.json"``...).

    Refused, as a `ModelFormatError` naming the file: above `MAX_JSON_BYTES`, not UTF-8, invalid JSON, nesting
    deeper than `MAX_DEPTH`, integers beyond int64, non-finite numbers (``1e999``, ``NaN``), anything but an object.
    The message never quotes the file.

    Raises:
        MissingComponentError: no such file.
    """
    path = Path(path)
    name = shown(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelFormatError(f"{name}: {size} bytes is far too large for a {what} "
                                   f"(at most {MAX_JSON_BYTES // 2**20} MiB)")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MissingComponentError(f"{name}: {what} not found") from None
    except (IsADirectoryError, NotADirectoryError, PermissionError, OSError) as error:
        raise ModelFormatError(f"{name}: the {what} could not be read ({type(error).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFormatError(f"{name}: the {what} is not UTF-8 text") from None
    if _depth(text) > MAX_DEPTH:
        raise ModelFormatError(f"{name}: the {what} nests objects or lists deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except _Refused as error:
        raise ModelFormatError(f"{name}: the {what} holds {error}") from None
    except (json.JSONDecodeError, RecursionError) as error:
        where = f" at line {error.lineno} column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        raise ModelFormatError(f"{name}: the {what} is not valid JSON{where}") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{name}: the {what} is not a JSON object")
    return data


def _depth(text: str) -> int:
    """Deepest bracket nesting outside strings (an upper bound of the parsed depth, found without recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def contained_path(folder: str | Path, name: object, source: str | Path, what: str = "file") -> Path:
    """``folder / name`` for a ``name`` taken from a file (``source``, for messages), never a path outside ``folder``.

    Containment is decided on the name, lexically: absolute names, drive letters, ``..`` parts, NUL bytes, empty and
    over-long names are refused before anything touches the disk. A symlink inside ``folder`` (download caches link
    into a blob store) is followed as usual. The message does not repeat the name.
    """
    where = shown(source)
    if not isinstance(name, str) or not name.strip():
        raise ModelFormatError(f"{where}: a {what} name in it is not a non-empty string")
    if "\0" in name or len(name) > MAX_NAME_CHARS:
        raise ModelFormatError(f"{where}: a {what} name in it is not a usable file name")
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or PureWindowsPath(name).drive or ".." in relative.parts:
        raise ModelFormatError(f"{where}: it names a {what} outside its folder; only files inside "
                               f"{Path(folder).name or 'its folder'}/ are read")
    parts = [part for part in relative.parts if part != "."]
    if not parts:
        raise ModelFormatError(f"{where}: a {what} name in it names the folder itself, not a file")
    if any(len(part) > MAX_PART_CHARS for part in parts):
        raise ModelFormatError(f"{where}: a {what} name in it is longer than a file name can be")
    return Path(folder).joinpath(*parts)
