"""LightX2V config JSON -> the DiT files, quantization, LoRAs and sampling settings it selects (spec README).

Entry point: `read_lightx2v_config(path)` -> `LightX2VConfig`. Paths in the file are taken relative to the config's
folder and stay inside the models folder that holds it (a config in ``models/wan_express/`` may name
``../diffusion_models/…`` and ``../loras/…``, nothing above ``models/``). ``dit_quant_scheme`` names (``fp8-sgl``, ``int8-vllm``, ...) name LightX2V GEMM backends; each maps to the
weight codes it runs, and our kernels pick their own backend for those codes. Unknown keys are listed, not fatal.
"""

from __future__ import annotations

import dataclasses
import math
import logging
import posixpath
from pathlib import Path
from typing import Any

from ...errors import MissingComponentError, ModelFormatError, UnsupportedModelError
from ...expert_names import FOLDERS
from ..files.boundary import boundary, shown
from ..files.json_files import contained_path, read_json
from ..lora.spec import LoraSpec

log = logging.getLogger(__name__)

# LightX2V dit_quant_scheme -> our quantization codes (the part after the dash is LightX2V's GEMM backend).
QUANT_SCHEMES = {
    **{f"fp8-{backend}": "fp8" for backend in ("vllm", "sgl", "q8f", "torchao", "triton", "tmo", "pertensor")},
    **{f"int8-{backend}": "int8" for backend in ("vllm", "sgl", "q8f", "torchao", "triton", "tmo")},
}

# Keys that choose files: (original, quantized) per model slot.
CHECKPOINT_KEYS = {
    "dit": ("dit_original_ckpt", "dit_quantized_ckpt"),
    "high": ("high_noise_original_ckpt", "high_noise_quantized_ckpt"),
    "low": ("low_noise_original_ckpt", "low_noise_quantized_ckpt"),
}
LOADER_KEYS = ("model_path", "dit_quantized", "dit_quant_scheme", "lora_configs",
               *(key for pair in CHECKPOINT_KEYS.values() for key in pair))
SAMPLING_KEYS = ("denoising_step_list", "sample_shift", "boundary_step_index", "sample_guide_scale")
# lora_configs ``name`` -> the expert it takes: LightX2V names an expert by its A14B subfolder.
LORA_EXPERTS = {folder: expert for expert, folder in FOLDERS.items()}


@dataclasses.dataclass(frozen=True)
class LightX2VConfig:
    """What a LightX2V config selects.

    Attributes:
        path: the config file.
        dit: the single DiT file or folder, or None.
        high, low: the Wan2.2 expert files or folders, or None.
        model_path: the model folder (used when no checkpoint key is given).
        quantization: ``"auto"`` (use the file as it is), ``"fp8"`` or ``"int8"``.
        quant_scheme: the LightX2V scheme name, e.g. ``"fp8-sgl"``.
        loras: the ``lora_configs`` entries (``name`` high_/low_noise_model -> ``expert`` "high"/"low").
        sampling: the sampling keys present (``denoising_step_list``, ``sample_shift``, ``boundary_step_index``,
            ``sample_guide_scale``), as given.
        unknown_keys: keys Wan Express does not use.
    """

    path: Path
    dit: Path | None
    high: Path | None
    low: Path | None
    model_path: Path | None
    quantization: str
    quant_scheme: str | None
    loras: list[LoraSpec]
    sampling: dict[str, Any]
    unknown_keys: list[str]


def is_lightx2v_config(data: object) -> bool:
    """A JSON object holding any LightX2V loader or sampling key."""
    return isinstance(data, dict) and any(key in data for key in LOADER_KEYS + SAMPLING_KEYS)


@boundary("LightX2V config")
def read_lightx2v_config(path: str | Path) -> LightX2VConfig:
    """Read a LightX2V config JSON.

    Raises:
        ModelFormatError: invalid JSON, a wrong value type, or quantized checkpoints without a scheme.
        UnsupportedModelError: a ``dit_quant_scheme`` whose weights we cannot run (nvfp4, mxfp4, ...).
    """
    path = Path(path)
    data = read_json(path, "LightX2V config")
    if not is_lightx2v_config(data):
        raise ModelFormatError(f"{path}: not a LightX2V config (none of {', '.join(LOADER_KEYS)} is set)")
    base = path.parent

    def location(key: str) -> Path | None:
        value = data.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise ModelFormatError(f"{shown(path)}: {key} must be a path string")
        found = _contained(path, value, key, folder_itself=key == "model_path")
        if not found.exists():
            raise MissingComponentError(f"{shown(path)}: {key} names a file that is not there ({found.name})")
        return found

    quantized = data.get("dit_quantized", False)
    if not isinstance(quantized, bool):
        raise ModelFormatError(f"{shown(path)}: dit_quantized must be true or false")
    scheme = data.get("dit_quant_scheme")
    quantization = "auto"
    if quantized:
        if scheme is None:
            raise ModelFormatError(f"{path}: dit_quantized is true but dit_quant_scheme is missing "
                                   f"(e.g. {', '.join(list(QUANT_SCHEMES)[:3])})")
        if not isinstance(scheme, str) or scheme not in QUANT_SCHEMES:
            named = f" {scheme!r}" if isinstance(scheme, str) and len(scheme) <= 40 else ""
            raise UnsupportedModelError(f"{shown(path)}: dit_quant_scheme{named} is not supported; supported: "
                                        f"{', '.join(QUANT_SCHEMES)}")
        quantization = QUANT_SCHEMES[scheme]
    slot = 1 if quantized else 0
    chosen = {name: location(keys[slot]) for name, keys in CHECKPOINT_KEYS.items()}
    if (chosen["high"] is None) != (chosen["low"] is None):
        missing = CHECKPOINT_KEYS["low" if chosen["low"] is None else "high"][slot]
        raise ModelFormatError(f"{path}: a Wan2.2 expert checkpoint is set but {missing} is not; set both")
    config = LightX2VConfig(
        path=path, dit=chosen["dit"], high=chosen["high"], low=chosen["low"], model_path=location("model_path"),
        quantization=quantization, quant_scheme=scheme if quantized else None,
        loras=_loras(data.get("lora_configs") or [], base, path),
        sampling={key: data[key] for key in SAMPLING_KEYS if key in data},
        unknown_keys=sorted(key for key in data if key not in LOADER_KEYS + SAMPLING_KEYS))
    if config.unknown_keys:
        log.info("%s: keys not used by Wan Express: %s", path.name, ", ".join(config.unknown_keys))
    return config


def _loras(entries: object, base: Path, path: Path) -> list[LoraSpec]:
    """``lora_configs`` entries ``{path, strength=1.0, alpha=null, name}`` -> `LoraSpec` (path relative to ``base``)."""
    if not isinstance(entries, list):
        raise ModelFormatError(f"{path}: lora_configs must be a list of {{path, strength, alpha, name}} objects")
    loras = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ModelFormatError(f"{path}: lora_configs[{i}] needs a 'path' string")
        name = entry.get("name")
        if name is not None and (not isinstance(name, str) or name not in LORA_EXPERTS):
            raise ModelFormatError(f"{shown(path)}: lora_configs[{i}].name must be one of "
                                   f"{', '.join(LORA_EXPERTS)}")
        try:
            strength = float(entry.get("strength", 1.0))
            alpha = None if entry.get("alpha") is None else float(entry["alpha"])
        except (TypeError, ValueError, OverflowError):
            raise ModelFormatError(f"{shown(path)}: lora_configs[{i}] strength/alpha must be numbers") from None
        if not all(math.isfinite(value) for value in (strength, alpha or 0.0)):
            raise ModelFormatError(f"{shown(path)}: lora_configs[{i}] strength/alpha must be finite numbers")
        lora = _contained(path, entry["path"], f"lora_configs[{i}].path")
        loras.append(LoraSpec(lora, strength, alpha, LORA_EXPERTS.get(name)))
    return loras


def _contained(config: Path, value: object, what: str, folder_itself: bool = False) -> Path:
    """A path named in the config, from the config's folder, kept inside the models folder holding that folder."""
    base = config.parent
    if not isinstance(value, str):
        return contained_path(base, value, config, what)
    relative = posixpath.normpath(posixpath.join(base.name, value.replace("\\", "/")))
    return contained_path(base.parent, relative, config, what, folder_itself=folder_itself)
