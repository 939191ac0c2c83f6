"""`inspect(path)`: a JSON-serialisable report of what a DiT file or folder is and how Wan Express will run it.

Also the ``python -m wan_express inspect PATH`` subcommand (`add_arguments`, `run`). The report names the family,
variant, size, expert role, layout, precision and quantization, prefixes, what a ``convert`` export records about
itself (source, merged LoRAs, scheme), the components found beside the model and what is missing, with
plain-language hints. Recognised models we cannot run (Animate) are named too.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError, UnsupportedVariantError
from .components import find_components
from .files.boundary import boundary
from .dit.folders import ModelPair, ModelUnit, candidates
from .dit.formats import FAMILY_PATTERNS, KNOWN_PREFIXES, SIZE_OF_DIM
from .dit.loader import DitSource, open_unit
from .dit.plan import lightx2v_config_of, resolve_target

# Component field -> plain name (the CLIP encoder is needed only by models with the CLIP branch).
COMPONENTS = {
    "text_encoder": "umT5-XXL text encoder",
    "tokenizer": "umT5 tokenizer",
    "clip_vision": "CLIP vision encoder",
    "vae": "VAE",
}

FORMAT_HINTS = {
    "lightx2v_fp8": "FP8 weights with per-channel scales: fast W8A8 on GPUs with FP8 (compute capability 8.9+); "
                    "elsewhere each layer is dequantized to bf16 as it runs",
    "lightx2v_int8": "INT8 weights with per-channel scales: fast W8A8 on GPUs with INT8 tensor cores (8.0+); "
                     "elsewhere dequantized to bf16 as it runs",
    "per_tensor_fp8": "FP8 weights with one scale per tensor: runs on the FP8 path (scale broadcast)",
    "per_tensor_int8": "INT8 weights with one scale per tensor: runs on the INT8 path (scale broadcast)",
    "scaled_fp8": "legacy ComfyUI scaled FP8 (per-tensor scales): runs on the FP8 path with per-token activation "
                  "scales",
    "comfy_quant": "ComfyUI per-layer quantization: supported layers run quantized, the others in float",
    "unscaled_fp8": "FP8 weights stored without scales (scale 1): expect lower quality than a scaled file",
    "mixed": "several quantization schemes in one file: each layer runs with its own",
}


@boundary("DiT model")
def inspect(path: str | Path, file: str | None = None) -> dict[str, Any]:
    """Describe the DiT at ``path`` (file, folder, Wan2.2 A14B folder or LightX2V config) without loading it.

    Returns a dict of JSON types: ``path``, ``kind`` (``dit``, ``dit_pair`` or ``choices`` when a folder holds
    several models), ``models`` (one report per model), ``components``, ``hints``.
    """
    path = Path(path)
    try:
        target = resolve_target(path, file)
    except ModelFormatError:
        if not path.is_dir() or file is not None or len(candidates(path)) < 2:
            raise
        choices = candidates(path)
        reports = [_model_report(resolve_target(choice, None)) for choice in choices]
        return {"path": str(path), "kind": "choices", "models": reports, "components": _components(path, reports),
                "hints": [f"{len(choices)} models in one folder are never merged: name one "
                          f"({', '.join(c.name for c in choices)})"]}
    units = [target.high, target.low] if isinstance(target, ModelPair) else [target]
    reports = [_model_report(unit) for unit in units]
    folder = _component_folder(path, target)
    report = {"path": str(path), "kind": "dit_pair" if isinstance(target, ModelPair) else "dit", "models": reports,
              "components": _components(folder, reports)}
    report["hints"] = _hints(report, target)
    if (config := lightx2v_config_of(path)) is not None:
        report["lightx2v_config"] = {"quantization": config.quantization, "quant_scheme": config.quant_scheme,
                                     "sampling": config.sampling, "loras": [str(l.path) for l in config.loras],
                                     "unknown_keys": config.unknown_keys}
    return report


def _model_report(unit: ModelUnit) -> dict[str, Any]:
    try:
        source = open_unit(unit)
    except UnsupportedVariantError as error:
        return {"name": unit.path.name, "path": str(unit.path), "supported": False, "variant": error.variant,
                "model": error.model, "role": unit.role, "reason": str(error)}
    return _source_report(source)


def _source_report(source: DitSource) -> dict[str, Any]:
    config = source.config
    parameters = sum(math.prod(shape) for key, shape in source.tensors.shapes().items()
                     if not key.endswith(".weight_scale"))
    quant = source.details["quantization"]
    return {
        "name": source.path.name,
        "path": str(source.path),
        "supported": True,
        "family": _family(source),
        "variant": "vace" if config.is_vace else config.model_type,
        "size": SIZE_OF_DIM.get(config.dim, f"custom (dim {config.dim}, {config.num_layers} blocks)"),
        "role": source.role,
        "layout": source.layout,
        "container": source.details["container"],
        "files": len(source.details["files"]),
        "prefix_stripped": source.details["prefix"],
        "key_names": source.details["key_names"],
        "ignored_keys": source.details["ignored_keys"],
        "precision": _precision(quant),
        "quantization": quant,
        "config": {"model_type": config.model_type, "in_dim": config.in_dim, "out_dim": config.out_dim,
                   "dim": config.dim, "ffn_dim": config.ffn_dim, "num_heads": config.num_heads,
                   "num_layers": config.num_layers, "clip_branch": config.clip_branch,
                   **({"vace_layers": list(config.vace_layers), "vace_in_dim": config.vace_in_dim}
                      if config.is_vace else {})},
        "config_origin": source.details["config_origin"],
        "parameters": parameters,
        "export": source.details["export"],
    }


def _precision(quant: dict[str, Any]) -> str:
    floats = "/".join(quant["float_dtypes"]) or "none"
    if not quant["schemes"]:
        return floats
    schemes = ", ".join(f"{scheme} x{count}" for scheme, count in quant["schemes"].items())
    return f"{schemes}; other tensors {floats}"


def _family(source: DitSource) -> str:
    config = source.config
    if config.clip_branch or config.dim == 1536 or config.is_vace:
        return "Wan2.1"  # only Wan2.1 has the CLIP branch, VACE and the 1.3B size
    if config.model_type == "ti2v" or config.model_type == "i2v" or source.role is not None:
        return "Wan2.2"  # TI2V-5B, the CLIP-less I2V experts, and anything named as an expert
    for pattern, family in FAMILY_PATTERNS:
        if pattern.search(str(source.path)):
            return family
    return "Wan2.1 or Wan2.2 (same shapes; the name does not say)"


def _component_folder(path: Path, target: ModelUnit | ModelPair) -> Path:
    if path.is_dir():
        return path
    if isinstance(target, ModelPair):
        return target.path if target.path.is_dir() else path.parent
    return path.parent


def _components(folder: Path, reports: list[dict[str, Any]]) -> dict[str, Any]:
    found = find_components(folder)
    needs_clip = any(r.get("config", {}).get("clip_branch") for r in reports)
    paths = {field: (str(getattr(found, field)) if getattr(found, field) else None) for field in COMPONENTS}
    missing = [label for field, label in COMPONENTS.items()
               if getattr(found, field) is None and (field != "clip_vision" or needs_clip)]
    return {"searched": str(folder), **paths, "missing": missing}


def _hints(report: dict[str, Any], target: ModelUnit | ModelPair) -> list[str]:
    hints = []
    for model in report["models"]:
        if not model["supported"]:
            hints.append(f"{model['name']}: {model['model']} is recognised but not supported yet")
            continue
        quant = model["quantization"]
        if quant["quant_format"] in FORMAT_HINTS:
            hints.append(f"{model['name']}: {FORMAT_HINTS[quant['quant_format']]}")
        if quant["marker"] and quant["marker"]["full_precision_matmul"]:
            hints.append(f"{model['name']}: its 2-element scaled_fp8 marker makes ComfyUI run bf16 matmuls; Wan "
                         "Express runs the FP8 weights directly")
        if model["config_origin"] == "inferred from tensors":
            hints.append(f"{model['name']}: no config.json; the architecture was read from the tensor shapes")
        if model["prefix_stripped"] not in KNOWN_PREFIXES:
            hints.append(f"{model['name']}: unusual key prefix {model['prefix_stripped']!r} was stripped")
        if model["export"]:
            export = model["export"]
            loras = ", ".join(f"{lora['file']} x{lora['strength']:g}" for lora in export.get("loras", [])) or "none"
            hints.append(f"{model['name']}: exported by Wan Express ({export.get('layout')}, "
                         f"{export.get('scheme')}) from {export.get('source')}; LoRAs merged: {loras}")
        if model["ignored_keys"]:
            hints.append(f"{model['name']}: {model['ignored_keys']} keys outside the DiT were ignored")
        if model["family"] == "Wan2.2" and model["variant"] != "ti2v" and model["role"] is None:
            hints.append(f"{model['name']}: looks like a Wan2.2 A14B expert but the name does not say high_noise or "
                         "low_noise; name it so, or load the A14B folder")
    if isinstance(target, ModelPair):
        hints.append("Wan2.2 A14B: the high-noise expert runs the first steps and the low-noise expert the rest "
                     "(4-step distill: boundary_step_index 2)")
    if report["components"]["missing"]:
        hints.append(f"not found in {report['components']['searched']}: {', '.join(report['components']['missing'])}"
                     "; put them there, or pick them in their own loader nodes in ComfyUI")
    return hints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a DiT file, a model folder, a Wan2.2 A14B folder or a LightX2V config JSON")
    parser.add_argument("--file", help="the model to describe inside a folder that holds several")


def run(args: argparse.Namespace) -> int:
    print(json.dumps(inspect(args.path, args.file), indent=2))
    return 0
