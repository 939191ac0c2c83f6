"""``python -m wan_express convert``: merge LoRAs into a DiT offline and export one LightX2V or ComfyUI single file.

    python -m wan_express convert --base MODEL --lora LORA[:strength[:alpha]] ... --to lightx2v-fp8 OUT.safetensors

The base is opened with `loaders.dit.loader.open_unit` (every layout it reads, quantized ones included) and read
lazily; each tensor is merged (`loaders.lora.merge`), quantized if the layout asks for it and streamed to a temporary
file that is renamed at the end (`loaders.export.writer`). The file's metadata records the base, the LoRAs with their
strengths and the quantization scheme. `convert_dit` is the same work as a function (the Wan Express Convert node
runs it too).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

from ...errors import InvalidInputError
from ..dit.folders import ModelPair
from ..files.boundary import boundary
from ..dit.loader import open_unit
from ..dit.plan import resolve_target
from ..lora.spec import LoraSpec, load_loras
from ..lora.merge import LoraPlan, MergedTensors
from ..quantization import dequantized
from .writer import EXPORT_FORMATS, write_dit

log = logging.getLogger(__name__)

_PROGRESS_EVERY = 100  # source tensors between two progress lines


def parse_lora_argument(text: str) -> LoraSpec:
    """``PATH``, ``PATH:STRENGTH`` or ``PATH:STRENGTH:ALPHA``; a colon counts only when a number follows it, so
    ``C:\\x.safetensors`` stays a path."""
    numbers: list[float] = []
    path = text
    while len(numbers) < 2:
        head, separator, tail = path.rpartition(":")
        if not (separator and head):
            break
        try:
            numbers.insert(0, float(tail))
        except ValueError:
            break
        path = head
    strength = numbers[0] if numbers else 1.0
    alpha = numbers[1] if len(numbers) == 2 else None
    return LoraSpec(Path(path), strength, alpha)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, type=Path,
                        help="base DiT in any layout the loader reads (one model: for Wan2.2 A14B give one expert)")
    parser.add_argument("--lora", action="append", default=[], type=parse_lora_argument,
                        metavar="PATH[:STRENGTH[:ALPHA]]",
                        help="LoRA to merge (repeatable, applied in order; strength defaults to 1.0; ALPHA overrides "
                        "the file's alpha: scale = alpha / rank)")
    parser.add_argument("--to", required=True, choices=sorted(EXPORT_FORMATS), dest="layout",
                        help="; ".join(f"{name}: {fmt.description}" for name, fmt in sorted(EXPORT_FORMATS.items())))
    parser.add_argument("output", type=Path, metavar="OUT.safetensors", help="file to write")


@boundary("DiT model", "base")
def convert_dit(base: Path, output: Path, layout: str, loras: Sequence[LoraSpec] = (), *, file: str | None = None,
                source: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Merge ``loras`` into the DiT at ``base`` (``file``: the model inside a folder holding several) and write it
    to ``output`` in ``layout`` (a key of `EXPORT_FORMATS`), recording ``source`` (default: the base's name), the
    LoRAs and the scheme in the file's metadata. ``progress(done, total)`` runs after each tensor; an exception
    it raises (an interrupt) stops the export leaving no ``output`` behind (an existing one is kept).

    Returns ``write_dit``'s ``{"tensors", "bytes"}`` plus ``"loras"`` (how many were merged).
    """
    if output.suffix != ".safetensors":
        raise InvalidInputError(f"{output}: the output must be a .safetensors file")
    if not output.parent.is_dir():
        raise InvalidInputError(f"{output}: the folder {output.parent.name}/ does not exist; create it first")
    target = resolve_target(Path(base), file)
    if isinstance(target, ModelPair):
        raise InvalidInputError(f"{base} is a Wan2.2 A14B model with two experts; convert one at a time "
                                f"({target.high.path} or {target.low.path})")
    if output.resolve() in {path.resolve() for path in target.files}:
        raise InvalidInputError(f"{output}: this is the model being converted; write the export to another file")
    opened = open_unit(target)
    applied = load_loras(loras)
    plan = LoraPlan(applied, opened.tensors.shapes(), source=opened.name)
    merged = MergedTensors(dequantized(opened.tensors, opened.layers), plan)  # fp32 weights; the export quantizes
    export = EXPORT_FORMATS[layout]
    metadata = {
        "source": source or base.name,
        "loras": json.dumps([{"file": lora.lora.name, "strength": lora.strength, "alpha": lora.alpha}
                             for lora in applied]),
        "scheme": "bf16" if export.scheme is None else f"{export.scheme.codes}/{export.scheme.granularity}",
    }
    return {**write_dit(output, merged, layout, metadata, progress=progress), "loras": len(applied)}


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % _PROGRESS_EVERY == 0 or done == total:
            log.info("convert: %d/%d tensors", done, total)

    written = convert_dit(args.base, args.output, args.layout, args.lora, progress=progress)
    print(f"wrote {args.output} ({args.layout}, {written['tensors']} tensors, {written['bytes'] / 2**30:.2f} GiB, "
          f"{written['loras']} LoRA(s) merged) in {time.perf_counter() - started:.1f} s")
    return 0
