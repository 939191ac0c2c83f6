"""What a DiT load will read, decided once: `plan_dit(path, file, loras, quantization)` -> `DitPlan`.

The plan is the seam between a node and the library: the loader node's ``IS_CHANGED`` stamps `DitPlan.files`, the
node and `load_dit` build from the same plan. It follows a LightX2V config JSON (its checkpoints, legacy quantized
subfolders, ``dit_quant_scheme`` and ``lora_configs``), resolves the folder rules (`folders.resolve`) to one model
or a Wan2.2 A14B pair, and routes each LoRA to the experts it applies to.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from ...errors import InvalidInputError, ModelFormatError
from ...expert_names import BOTH, EXPERTS, HIGH, LOW
from ..files.json_files import read_json
from ..lora.spec import LoraSpec, route_loras
from .folders import ModelPair, ModelUnit, pair_folders, resolve
from .lightx2v_config import LightX2VConfig, is_lightx2v_config, read_lightx2v_config

QUANTIZATIONS = ("auto", "bf16", "fp8", "int8")
# LightX2V's legacy trees keep quantized weights in a subfolder named after the codes (spec formats.md §4.6); with
# dit_quantized and no *_quantized_ckpt, LightX2V looks there first.
_LEGACY_QUANTIZED_SUBFOLDERS = ("{codes}", "distill_{codes}")


@dataclasses.dataclass(frozen=True)
class DitPlan:
    """One DiT load, resolved but not read.

    Attributes:
        path: what the user pointed at (file, folder, A14B folder or LightX2V config).
        units: the model's files, or the (high, low) experts of a Wan2.2 A14B pair.
        quantization: ``bf16`` / ``fp8`` / ``int8``, or ``auto`` (keep what the files hold); a LightX2V config's
            ``dit_quant_scheme`` already applied.
        loras: per unit, the LoRAs merged into it at load, in stack order (a config's ``lora_configs`` first).
        config: the LightX2V config when ``path`` is one, else None.
    """

    path: Path
    units: tuple[ModelUnit, ...]
    quantization: str
    loras: tuple[tuple[LoraSpec, ...], ...]
    config: LightX2VConfig | None = None

    @property
    def is_pair(self) -> bool:
        return len(self.units) == 2

    @property
    def files(self) -> list[Path]:
        """Every file the load reads: the config JSON, weights, ``config.json`` cross-checks and LoRAs."""
        found = [self.path] if self.path.is_file() else []
        found += [f for unit in self.units for f in (*unit.files, unit.config) if f is not None]
        found += [spec.path for specs in self.loras for spec in specs]
        return list(dict.fromkeys(found))

    def stamp(self) -> str:
        """Changes when a file the load reads changes on disk (path, mtime, size) or the plan does."""
        stamps = [(str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in self.files]
        return repr((stamps, self.quantization, [[(str(s.path), s.strength, s.alpha) for s in specs]
                                                 for specs in self.loras]))


def plan_dit(path: str | Path, file: str | tuple[str | None, str | None] | None = None, *,
             loras: Sequence[LoraSpec] = (), quantization: str = "auto") -> DitPlan:
    """Resolve a DiT load: which files, which model(s), which LoRAs on which expert.

    Args:
        path: a model file, a model folder, a Wan2.2 A14B folder, or a LightX2V config JSON.
        file: the model inside a folder holding several; for an A14B folder a ``(high, low)`` pair of names.
        loras: LoRAs to merge, after a LightX2V config's own; on a pair each goes to its ``expert`` (``"high"``,
            ``"low"`` or ``"both"``), else to the expert its file name names, else to both.
        quantization: ``auto`` / ``bf16`` / ``fp8`` / ``int8``.
    """
    if quantization not in QUANTIZATIONS:
        raise InvalidInputError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    path = Path(path)
    config = lightx2v_config_of(path)
    if quantization == "auto" and config is not None:
        quantization = config.quantization
    for spec in loras:
        if spec.expert not in (None, BOTH, *EXPERTS):
            raise InvalidInputError(f"LoRA {spec.path}: expert {spec.expert!r} is not 'high', 'low', 'both' or "
                                    "None (the file name decides, else both)")
    specs = [*(config.loras if config else ()), *(dataclasses.replace(spec, path=Path(spec.path)) for spec in loras)]
    pair_files = file if isinstance(file, tuple) else (None, None)
    target = (_resolve_pair(path, *pair_files, config) if any(pair_files)
              else resolve_target(path, None if isinstance(file, tuple) else file, config))
    if isinstance(target, ModelPair):
        routed = route_loras(specs)
        return DitPlan(path, (target.high, target.low), quantization,
                       tuple(tuple(routed[role]) for role in EXPERTS), config)
    return DitPlan(path, (target,), quantization, (tuple(specs),), config)


def pair_of(path: Path, high_file: str | None = None, low_file: str | None = None) -> ModelPair:
    """The expert files of an A14B folder or LightX2V config; refuses a single model."""
    return _resolve_pair(path, high_file, low_file, lightx2v_config_of(path))


def _resolve_pair(path: Path, high_file: str | None, low_file: str | None,
                  config: LightX2VConfig | None) -> ModelPair:
    experts = pair_folders(path) if path.is_dir() else None
    if experts is not None:
        pair = ModelPair(path, resolve(experts[0], high_file, role=HIGH), resolve(experts[1], low_file, role=LOW))
    else:
        pair = resolve_target(path, None, config)
    if not isinstance(pair, ModelPair):
        raise ModelFormatError(f"{path}: not a Wan2.2 A14B model (expected high_noise_model/ and low_noise_model/ "
                               "subfolders, or a LightX2V config with high_/low_noise checkpoints); use open_dit")
    return pair


def lightx2v_config_of(path: Path) -> LightX2VConfig | None:
    """The LightX2V config when ``path`` is one; None for model files and folders."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    data = read_json(path, "LightX2V config")
    if not is_lightx2v_config(data):
        raise ModelFormatError(f"{path}: this JSON is not a LightX2V config (a model's config.json is read from "
                               "its folder: give the folder instead)")
    return read_lightx2v_config(path)


def resolve_target(path: Path, file: str | None, config: LightX2VConfig | None = None) -> ModelUnit | ModelPair:
    """The files behind a path, following a LightX2V config's selection when the path is one.

    ``config``: the config already read from ``path`` (`lightx2v_config_of`), so it is not read again; None reads
    it here when ``path`` is one.
    """
    if config is None:
        config = lightx2v_config_of(path)
    if config is None:
        return resolve(path, file)
    if config.high is not None:
        return ModelPair(path, _single(resolve(config.high, role=HIGH), config.high),
                         _single(resolve(config.low, role=LOW), config.low))
    chosen = config.dit or _legacy_quantized_folder(config) or config.model_path
    if chosen is None:
        raise ModelFormatError(f"{path}: the config names no model (set model_path or a *_ckpt key)")
    return resolve(chosen, file)


def _legacy_quantized_folder(config: LightX2VConfig) -> Path | None:
    if config.quant_scheme is None or config.model_path is None:
        return None
    for pattern in _LEGACY_QUANTIZED_SUBFOLDERS:
        candidate = config.model_path / pattern.format(codes=config.quantization)
        if candidate.is_dir():
            return candidate
    return None


def _single(found: ModelUnit | ModelPair, path: Path) -> ModelUnit:
    if isinstance(found, ModelPair):
        raise ModelFormatError(f"{path}: an expert checkpoint must be one model, not an A14B folder")
    return found
