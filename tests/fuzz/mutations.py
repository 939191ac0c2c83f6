"""Building blocks of hostile inputs: raw safetensors files with hand-made headers, hostile JSON values, and the
mutations (bit flips, truncation at every boundary, hostile header entries) applied to valid files.

Every function takes the case's ``random.Random`` so a case is a pure function of (seed, index).
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

# Values that break parsers that trust their input: huge, negative, wrong type, wrong rank, non-finite.
HOSTILE_INTS = [-1, 0, 1, 2**31, 2**32 + 1, 2**63, 2**64, 10**30, -(2**63)]
HOSTILE_VALUES: list[Any] = [None, True, False, "", "x", "../x", "/etc/passwd", [], {}, [[]], 1.5, float("nan"),
                             float("inf"), *HOSTILE_INTS, "\ud800", "a\u0000b", ["a", 1], {"a": {"b": []}}]
HOSTILE_DTYPES = ["F4", "f32", "", "C64", "F8_E8M0", "BOOL", "U64", "I64", "F64", "Q4", 7, None, ["F32"]]
HOSTILE_SHAPES: list[Any] = [[2**40, 2**40], [-1], [2, "3"], [[2]], [], [0], [10**20], [2**31] * 6, [True],
                             [1] * 200, None, "2x2", [2.0, 2.0], [2**62, 0], [0, 2**62]]
HOSTILE_OFFSETS: list[Any] = [[0, 2**64], [-1, 5], [5, 3], [0, 1e3], ["0", "8"], [0], [0, 8, 9], None, [True, 8],
                              [0, 10**30], [0, 0], [2**63, 2**63 + 8], {"0": 8}]


def encode(header: dict) -> bytes:
    """The JSON bytes of a header (non-ASCII and non-finite values kept, as a hostile writer would)."""
    return json.dumps(header, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


def safetensors_bytes(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else encode(header)
    return struct.pack("<Q", len(raw) if length is None else length % 2**64) + raw + data


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, biased towards objects of header-like entries."""
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        return rng.choice(HOSTILE_VALUES)
    if roll < 0.5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["dtype", "shape", "data_offsets", "__metadata__", "a.weight", "blocks.0.x", "weight_map"]
    return {rng.choice(keys) + ("" if rng.random() < 0.7 else str(rng.randrange(9))): random_json(rng, depth + 1)
            for _ in range(rng.randrange(5))}


def flip_bits(rng: random.Random, raw: bytes, begin: int, end: int, flips: int) -> bytes:
    data = bytearray(raw)
    for _ in range(flips):
        if end > begin:
            data[rng.randrange(begin, end)] ^= 1 << rng.randrange(8)
    return bytes(data)


def boundaries(raw: bytes, header: dict) -> list[int]:
    """Every offset where a safetensors file changes meaning: inside the length field, the header's end, and each
    tensor's first and last byte (±1)."""
    length = struct.unpack("<Q", raw[:8])[0]
    cuts = set(range(9)) | {8 + length - 1, 8 + length, 8 + length + 1}
    for entry in header.values():
        if isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list):
            for offset in entry["data_offsets"]:
                cuts |= {8 + length + offset - 1, 8 + length + offset, 8 + length + offset + 1}
    return sorted(cut for cut in cuts if 0 <= cut < len(raw))


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def mutate_header(rng: random.Random, header: dict, data: bytes) -> bytes:
    """One hostile variant of a valid safetensors file (its header dict and data section)."""
    header = json.loads(json.dumps(header))
    keys = [key for key in header if key != "__metadata__"]
    kind = rng.randrange(12)
    if kind == 0:
        return safetensors_bytes(encode(random_json(rng)), data)
    if kind == 1:
        raw = safetensors_bytes(header, data)
        length = struct.unpack("<Q", raw[:8])[0]
        return flip_bits(rng, raw, 8, 8 + length, rng.randrange(1, 9))
    if kind == 2:
        entry = header[rng.choice(keys)]
        field = rng.choice(["dtype", "shape", "data_offsets"])
        pool = {"dtype": HOSTILE_DTYPES, "shape": HOSTILE_SHAPES, "data_offsets": HOSTILE_OFFSETS}[field]
        entry[field] = rng.choice(pool + HOSTILE_VALUES) if rng.random() < 0.8 else random_json(rng)
        if rng.random() < 0.2:
            del entry[field]
        return safetensors_bytes(header, data)
    if kind == 3:  # alias or overlap ranges: the same bytes under many tensors, or a range across two tensors
        if rng.random() < 0.5:  # a 1 MiB tensor read a thousand times: gigabytes from a small file
            size = 2**20
            header["big"] = {"dtype": "U8", "shape": [size], "data_offsets": [len(data), len(data) + size]}
            data += bytes(size)
        first = header["big" if "big" in header else keys[0]]
        for i in range(rng.choice([1, 10, 2000])):
            header[f"alias.{i}"] = dict(first)
        if rng.random() < 0.5:
            header[keys[-1]]["data_offsets"] = [0, header[keys[-1]]["data_offsets"][1]]
        return safetensors_bytes(header, data)
    if kind == 4:  # gaps, shuffles and ranges that do not cover the data section
        begin, end = header[rng.choice(keys)]["data_offsets"]
        tail = rng.choice([b"", b"\0" * rng.randrange(1, 64)])
        header[rng.choice(keys)]["data_offsets"] = [begin + rng.choice([-4, -1, 1, 4]), end + rng.choice([-4, 0, 4])]
        return safetensors_bytes(header, data + tail)
    if kind == 5:
        header["__metadata__"] = rng.choice([[], {"a": 1}, {"a": {"b": "c"}}, "text", {"format": "pt"}, None,
                                             {"\ud800": "x"}, {"x": "\ud800"}])
        return safetensors_bytes(header, data)
    if kind == 6:
        raw = safetensors_bytes(header, data)
        cut = rng.choice(boundaries(raw, header))
        return raw[:cut]
    if kind == 7:
        raw = encode(header)
        length = rng.choice([0, 1, len(raw) - 1, len(raw) + 1, 2**63, 2**64 - 1, 100 * 2**20 + 1])
        return safetensors_bytes(raw, data, length)
    if kind == 8:  # nesting, huge integers and invalid UTF-8 in the JSON text itself
        key = rng.choice(keys)
        text = encode(header).decode("utf-8", "surrogatepass")
        pieces = [nested(rng.choice([50, 5000, 100000])), "9" * rng.choice([30, 5000]), "1e999", "NaN", "-Infinity"]
        hostile = f'"{key}": {{"dtype": "F32", "shape": {rng.choice(pieces)}, "data_offsets": [0, 8]}}'
        raw = ("{" + hostile + "," + text[1:]).encode()
        if rng.random() < 0.3:
            raw = raw.replace(b'"F32"', b'"F3\xff"', 1)
        return safetensors_bytes(raw, data)
    if kind == 9:  # many keys, or keys that look like paths and control characters
        for i in range(rng.choice([10, 5000])):
            header[rng.choice(["blocks.%d.x", "../%d", "\u0000%d", "k" * 50 + "%d"]) % i] = {
                "dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
        return safetensors_bytes(header, data)
    if kind == 10:  # duplicate keys in the JSON text
        text = encode(header).decode("utf-8", "surrogatepass")
        key = rng.choice(keys)
        raw = ("{" + f'"{key}": {json.dumps(header[key])},' + text[1:]).encode()
        return safetensors_bytes(raw, data)
    data = flip_bits(rng, data, 0, len(data), rng.randrange(1, 4))  # corrupt data with a valid header
    return safetensors_bytes(header, data)
