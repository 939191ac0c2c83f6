"""``python -m wan_express convert``: merge LoRAs into a DiT offline and export one LightX2V or ComfyUI single file.

    python -m wan_express convert --base MODEL --lora LORA[:strength[:alpha]] ... --to lightx2v-fp8 OUT.safetensors

The base is opened with `loaders.dit.loader.open_dit` (every layout it reads, quantized ones included) and read
lazily; each tensor is merged (`loaders.lora.merge`), quantized if the layout asks for it and streamed to a temporary
file that is renamed at the end (`loaders.export.writer`). The file's metadata records the base, the LoRAs with their
strengths and the quantization scheme.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ...errors import InvalidInputError
from ..dit.loader import open_dit
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


def run(args: argparse.Namespace) -> int:
    if args.output.suffix != ".safetensors":
        raise InvalidInputError(f"{args.output}: the output must be a .safetensors file")
    started = time.perf_counter()
    base = open_dit(args.base)
    loras = load_loras(args.lora)
    plan = LoraPlan(loras, base.tensors.shapes(), source=base.name)
    merged = MergedTensors(dequantized(base.tensors, base.layers), plan)  # fp32 weights; the export quantizes
    export = EXPORT_FORMATS[args.layout]
    metadata = {
        "source": args.base.name,
        "loras": json.dumps([{"file": applied.lora.name, "strength": applied.strength, "alpha": applied.alpha}
                             for applied in loras]),
        "scheme": "bf16" if export.scheme is None else f"{export.scheme.codes}/{export.scheme.granularity}",
    }

    def progress(done: int, total: int) -> None:
        if done % _PROGRESS_EVERY == 0 or done == total:
            log.info("convert: %d/%d tensors", done, total)

    written = write_dit(args.output, merged, args.layout, metadata, progress=progress)
    print(f"wrote {args.output} ({args.layout}, {written['tensors']} tensors, {written['bytes'] / 2**30:.2f} GiB, "
          f"{len(loras)} LoRA(s) merged) in {time.perf_counter() - started:.1f} s")
    return 0
