"""Open any Wan DiT layout as official-named, canonically quantized tensors, and build the model from them.

Entry points: `open_dit(path, file=None) -> DitSource`, `open_dit_pair(path) -> (high, low)` for Wan2.2 A14B,
and `load_dit(path, ...)` -> `WanDiT` (or a `(high, low)` pair). Layouts: formats.md §1 rows 1-8 and 10-13, read
through `folders` (which files), `layouts` (prefix / diffusers names: the DiT's rename) and `..quantization`
(per-layer quantization; the ``quantization`` choice with the DiT's `quant_targets`). Tensors are read lazily,
one at a time.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ...errors import Interrupted, ModelFormatError
from ...kernels.ops import TorchOps
from ...kernels.quantized import QuantOps, QuantScheme
from ...models import WanConfig, WanDiT
from ...models.streaming import budgeted
from ...models.unsupported import refuse_unsupported
from ...models.wan_vace import vace_model_class
from ...sampling.failures import guarded
from ..files import TensorEntry, TensorView, open_tensors
from ..files.boundary import boundary
from ..files.json_files import read_json
from ..lora.merge import AppliedLora, LoraPlan, merged_view
from ..lora.spec import LoraSpec, load_loras
from ..quantization import canonicalize, dequantized, quantized
from .exported import read_export_metadata
from .folders import CONFIG_NAME, INDEX_NAME, ModelPair, ModelUnit
from .layouts import KeyLayout, detect_key_layout
from .plan import DitPlan, pair_of, plan_dit, resolve_target
from .quant_targets import is_quantization_target
from .vace_module import attach_vace_module

__all__ = ["CONFIG_NAME", "INDEX_NAME", "DitSource", "load_dit", "load_planned", "open_dit", "open_dit_pair",
           "open_unit"]

log = logging.getLogger(__name__)

_CODES = {"fp8": "fp8_e4m3", "int8": "int8"}
# config.json values the tensors cannot show; taken from the file when present.
_CONFIG_ONLY = ("eps", "text_len", "num_heads")
_CROSS_CHECKED = ("dim", "in_dim", "out_dim", "ffn_dim", "num_layers")


@dataclasses.dataclass(frozen=True)
class DitSource:
    """One DiT, opened but not loaded.

    Attributes:
        tensors: lazy official-named tensors; quantized layers as ``weight`` codes + fp32 ``weight_scale``.
        config: architecture, inferred from the tensor shapes (``config.json`` only cross-checks it).
        layers: official layer name (no ``.weight``) -> `QuantScheme` for every quantized layer.
        name: the file or folder name, for messages.
        role: ``"high"`` / ``"low"`` Wan2.2 expert when known, else None.
        path: the file or folder read.
        layout: ``official_folder``, ``diffusers_folder``, ``lightx2v_split_folder``, ``indexed_folder``,
            ``lightx2v_file``, ``comfyui_file``, ``diffusers_file`` or ``pth_file``.
        details: JSON-serialisable facts for `inspect` (prefix, key names, quantization, config origin, files, and
            ``export``: what a file written by ``convert`` records about itself, `read_export_metadata`, else None).
    """

    tensors: TensorView
    config: WanConfig
    layers: dict[str, QuantScheme]
    name: str
    role: str | None
    path: Path
    layout: str
    details: dict[str, Any]


@boundary("DiT model")
def open_dit(path: str | Path, file: str | None = None) -> DitSource:
    """Open one DiT from a file, a folder (``file`` picks among several models) or a LightX2V config JSON.

    Raises:
        ModelFormatError: a Wan2.2 A14B folder (use `open_dit_pair`), several models without ``file``, a file that
            is not a DiT (the message says what it is), or corrupt data.
        UnsupportedModelError: Animate and quantization formats we cannot run.
        MissingComponentError: nothing found.
    """
    target = resolve_target(Path(path), file)
    if isinstance(target, ModelPair):
        raise ModelFormatError(
            f"{path} is a Wan2.2 A14B model with two experts ({target.high.path.name}, {target.low.path.name}); "
            "open it with open_dit_pair, or load_dit, which returns both")
    return open_unit(target)


@boundary("Wan2.2 A14B model")
def open_dit_pair(path: str | Path, high_file: str | None = None,
                  low_file: str | None = None) -> tuple[DitSource, DitSource]:
    """Open the (high-noise, low-noise) experts of a Wan2.2 A14B folder or LightX2V config.

    ``high_file`` / ``low_file`` name the model inside an expert folder that holds several.
    """
    pair = pair_of(Path(path), high_file, low_file)
    return open_unit(pair.high), open_unit(pair.low)


@boundary("DiT model")
def load_dit(path: str | Path, file: str | tuple[str | None, str | None] | None = None, quantization: str = "auto",
             *, loras: Sequence[LoraSpec] = (), device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
             ops_factory: Callable[[Mapping[str, QuantScheme]], TorchOps] = QuantOps,
             vram_budget_gb: float | None = None,
             interrupt: Callable[[], bool] | None = None,
             vace_module: str | Path | None = None) -> WanDiT | tuple[WanDiT, WanDiT]:
    """Load a Wan DiT (or both Wan2.2 A14B experts) ready to run: `plan_dit` then `load_planned`.

    Args:
        path: a model file, a model folder, a Wan2.2 A14B folder, or a LightX2V config JSON (its ``lora_configs``
            are merged at load with their strength and alpha, each routed to the experts by its ``name``, else by
            a high/low token in its file name, else to both).
        file: the model to take inside a folder holding several; for an A14B folder a ``(high, low)`` pair.
        quantization: ``"auto"`` keeps what the file holds (a LightX2V config's ``dit_quant_scheme`` applies);
            ``"bf16"`` runs unquantized (a quantized file is dequantized, on purpose); ``"fp8"`` / ``"int8"``
            quantize the attention and FFN linears per output channel at load (LightX2V converter semantics).
        loras: LoRAs to merge at load, after a LightX2V config's own ``lora_configs``, the same way: into float
            weights before any ``fp8`` / ``int8`` quantization (one rounding), into a quantized file's layers by
            dequantize -> merge -> re-quantize with fresh scales of the layer's scheme. For an A14B pair each goes to
            its ``expert``, else to the expert its file name names (``high_noise`` / ``low_noise`` / ``high`` /
            ``low``), else to both; a single model takes every LoRA.
        device: where the weights go; tensors are converted one at a time.
        dtype: dtype of the float matmul weights (bf16 or fp32); fp32 islands stay fp32.
        ops_factory: builds the operations factory from the quantized-layer table.
        vram_budget_gb: (memory option) at most this many GB of DiT weights on ``device`` at once, both experts
            of a pair together: the weights stay in pinned host memory, what fits is copied in when the model
            runs (asynchronously, ahead of use), the rest streams block by block (`models.streaming`). The
            parameters then report the CPU between runs: give ``sample`` the ``device``. None: the weights are
            placed on ``device`` now.
        interrupt: asked before every tensor is read; True (or its own exception) stops the load with nothing
            kept. A CUDA out-of-memory becomes `OutOfGpuMemoryError` naming the remedies.
        vace_module: a Wan2.1 VACE module file (only ``vace_*`` tensors) to attach to this Wan2.1 T2V model of the
            same size (`vace_module.attach_vace_module`); the result is the VACE model.
    """
    return load_planned(plan_dit(path, file, loras=loras, quantization=quantization), device=device, dtype=dtype,
                        ops_factory=ops_factory, vram_budget_gb=vram_budget_gb, interrupt=interrupt,
                        vace_module=vace_module)


def load_planned(plan: DitPlan, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                 ops_factory: Callable[[Mapping[str, QuantScheme]], TorchOps] = QuantOps,
                 model_class: type[WanDiT] = WanDiT,
                 vram_budget_gb: float | None = None,
                 interrupt: Callable[[], bool] | None = None,
                 vace_module: str | Path | None = None) -> WanDiT | tuple[WanDiT, WanDiT]:
    """Build the model(s) of a `DitPlan`: a `WanDiT`, or the ``(high, low)`` experts of a pair.

    ``model_class``: a `WanDiT` subclass to build (a host's adapter with the same parameters), else `WanDiT`.
    ``vram_budget_gb``, ``interrupt``, ``vace_module``: see `load_dit`.
    """
    if vace_module is not None and plan.is_pair:
        raise ModelFormatError(f"{plan.path}: a VACE module attaches to a Wan2.1 T2V model, not to a Wan2.2 pair")
    return guarded("loading the DiT", _load_planned, plan, device, dtype, ops_factory, model_class, vram_budget_gb,
                   interrupt, vace_module)


def _load_planned(plan: DitPlan, device, dtype, ops_factory, model_class, vram_budget_gb, interrupt, vace_module):
    if vram_budget_gb is not None:  # memory option: built on the host, run from pinned copies under the budget
        models = _load_planned(plan, "cpu", dtype, ops_factory, model_class, None, interrupt, vace_module)
        budgeted(models if plan.is_pair else (models,), vram_budget_gb, device)
        return models
    specs = list(dict.fromkeys(spec for specs in plan.loras for spec in specs))
    applied = dict(zip(specs, load_loras(specs)))  # each file read once, whichever experts use it
    models = tuple(_build(_with_module(open_unit(unit), vace_module), plan.quantization, device, dtype, ops_factory,
                          model_class, [applied[spec] for spec in unit_loras], interrupt)
                   for unit, unit_loras in zip(plan.units, plan.loras))
    return models if plan.is_pair else models[0]


def _build(source: DitSource, quantization: str, device, dtype: torch.dtype, ops_factory, model_class,
           loras: list[AppliedLora], interrupt: Callable[[], bool] | None = None) -> WanDiT:
    """The model of ``source``, with ``loras`` merged at load (before a float file is quantized, so a merged layer
    is rounded once) and the ``quantization`` choice applied; ``interrupt`` asked before every tensor read."""
    tensors, layers = source.tensors, source.layers
    if interrupt is not None:
        tensors = _interruptible(tensors, interrupt)
    if quantization == "bf16" and layers:
        log.info("%s: dequantizing %d quantized layers to float, as asked (quantization='bf16')", source.name,
                 len(layers))
        tensors, layers = dequantized(tensors, layers), {}
    if loras:
        plan = LoraPlan(loras, tensors.shapes(), source=source.name)
        tensors = merged_view(_fp32_targets(tensors, plan.keys(), layers), plan, layers)
    if quantization in _CODES:
        tensors, layers = quantized(tensors, layers, _CODES[quantization], is_quantization_target)
    if source.config.is_vace:
        model_class = vace_model_class(model_class)
    model = model_class.from_state_dict(tensors, config=source.config, dtype=dtype, device=device,
                                        ops=ops_factory(layers), source=source.name)
    cfg = model.config
    schemes = sorted({f"{s.codes}/{s.granularity}" for s in layers.values()}) or [str(dtype).removeprefix("torch.")]
    log.info("Wan DiT %s (%s%s): %s%s, dim %d, %d blocks, %s on %s", source.name, source.layout,
             f", {source.role} noise" if source.role else "", cfg.model_type,
             f" VACE ({len(cfg.vace_layers)} hint blocks)" if cfg.is_vace else "", cfg.dim, cfg.num_layers,
             "+".join(schemes), device)
    return model


def _interruptible(view: TensorView, interrupt: Callable[[], bool]) -> TensorView:
    """``view`` with ``interrupt`` asked before each tensor is read (raising `Interrupted` when it returns True)."""
    def reader(key: str, read):
        def checked():
            if interrupt():
                raise Interrupted(f"loading {view.name} was interrupted before tensor {key}")
            return read()
        return checked
    return TensorView({key: TensorEntry(entry.shape, entry.dtype, reader(key, entry.read))
                       for key, entry in view.entries.items()}, view.name)


def _with_module(source: DitSource, vace_module: str | Path | None) -> DitSource:
    return source if vace_module is None else attach_vace_module(source, vace_module)


def _fp32_targets(view: TensorView, keys: list[str], layers: Mapping[str, QuantScheme]) -> TensorView:
    """``view`` with the float tensors a LoRA changes read as fp32, so ``stored + delta`` is rounded once, by the
    model's own cast or the online quantizer (as `merge_loras` on a built model), not first to a bf16 file's dtype."""
    entries = dict(view.entries)
    for key in keys:
        entry = entries[key]
        if key.removesuffix(".weight") not in layers and entry.dtype.is_floating_point:
            entries[key] = TensorEntry(entry.shape, torch.float32, lambda read=entry.read: read().float())
    return TensorView(entries, view.name)


@dataclasses.dataclass(frozen=True)
class RawUnit:
    """A unit's stored tensors before canonicalization: what `inspect` reports on refused models."""

    raw: TensorView
    metadata: dict[str, str]
    layout: KeyLayout
    config_json: dict[str, Any] | None


def _read_unit(unit: ModelUnit) -> RawUnit:
    """Open a unit's files (headers only) and find its key naming; refuses files that are not a DiT."""
    name = str(unit.path)
    raw = open_tensors(unit.key_files if unit.key_files is not None
                       else unit.path if unit.container == "pth_file" else unit.files, name=name)
    return RawUnit(raw, raw.metadata, detect_key_layout(raw.keys(), name), _read_config_json(unit.config))


def open_unit(unit: ModelUnit) -> DitSource:
    """Open resolved files as a `DitSource` (refusing Animate and anything that is not a DiT)."""
    name = str(unit.path)
    found = _read_unit(unit)
    raw, metadata, layout = found.raw, found.metadata, found.layout
    refuse_unsupported(layout.names, found.config_json, name)
    canonical = canonicalize(raw, layout.rename, metadata=metadata, source=name)
    config = WanConfig.infer(canonical.tensors.shapes(), source=name)
    config, config_origin = _cross_check(config, found.config_json, unit.config)
    if layout.ignored:
        log.info("%s: ignoring %d keys outside the DiT prefix %r (e.g. %s)", name, len(layout.ignored),
                 layout.prefix, layout.ignored[0])
    details = {
        "container": unit.container,
        "files": [str(f) for f in unit.files],
        "prefix": layout.prefix,
        "key_names": "diffusers" if layout.diffusers else "official",
        "ignored_keys": len(layout.ignored),
        "config_origin": config_origin,
        "quantization": canonical.summary,
        "export": read_export_metadata(metadata, name),
    }
    return DitSource(tensors=canonical.tensors, config=config, layers=canonical.layers, name=name, role=unit.role,
                     path=unit.path, layout=_layout(unit.container, layout.prefix, layout.diffusers,
                                                    canonical.summary["quant_format"]), details=details)


def _layout(container: str, prefix: str, diffusers: bool, quant_format: str) -> str:
    if container == "model_folder":
        return "diffusers_folder" if diffusers else "official_folder"
    if container == "split_folder":
        return "lightx2v_split_folder"
    if container != "single_file":
        return container
    if diffusers:
        return "diffusers_file"
    if prefix or quant_format in ("scaled_fp8", "comfy_quant"):
        return "comfyui_file"
    return "lightx2v_file"


def _read_config_json(path: Path | None) -> dict[str, Any] | None:
    return None if path is None else read_json(path, "config.json")


def _cross_check(config: WanConfig, data: dict[str, Any] | None, path: Path | None) -> tuple[WanConfig, str]:
    """Tensors decide the architecture; config.json adds eps/text_len and any disagreement is logged."""
    if data is None:
        return config, "inferred from tensors"
    if not config.is_vace and (data.get("_class_name") == "VaceWanModel" or "vace_layers" in data):
        raise ModelFormatError(f"{path} describes a Wan2.1 VACE model but the weights hold no vace_* tensors; for a "
                               "VACE module file, load the Wan2.1 T2V base model with it as vace_module")
    conflicts = [f"{key} {data[key]} (tensors: {getattr(config, key)})" for key in _CROSS_CHECKED
                 if key in data and data[key] != getattr(config, key)]
    if conflicts:
        log.warning("%s disagrees with the weights, which win: %s", path, "; ".join(conflicts))
    try:
        extra = {key: type(getattr(config, key))(data[key]) for key in _CONFIG_ONLY if key in data}
        if config.is_vace and data.get("vace_layers"):  # the tensors only show how many
            extra["vace_layers"] = tuple(int(i) for i in data["vace_layers"])
    except (TypeError, ValueError, OverflowError):
        raise ModelFormatError(f"{path}: {', '.join(_CONFIG_ONLY)} and vace_layers must be numbers that fit the "
                               "weights") from None
    if "vace_layers" in extra and len(extra["vace_layers"]) != len(config.vace_layers):
        raise ModelFormatError(f"{path}: vace_layers lists {len(extra['vace_layers'])} blocks but the weights hold "
                               f"{len(config.vace_layers)} vace_blocks")
    try:
        config = dataclasses.replace(config, **extra)
    except (TypeError, ValueError, OverflowError, ModelFormatError):
        raise ModelFormatError(f"{path}: {', '.join(_CONFIG_ONLY)} and vace_layers must be numbers that fit the "
                               "weights") from None
    return config, ("inferred from tensors, config.json disagrees" if conflicts
                    else "inferred from tensors, matches config.json")
