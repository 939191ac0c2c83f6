"""Nodes: describe a DiT (``WanExpressInspect``, the ``inspect`` subcommand's report as a few readable lines) and
export one with LoRAs merged and re-quantized (``WanExpressConvert``, the ``convert`` subcommand) into
``models/diffusion_models/``, where the DiT loader lists it."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import InvalidInputError
from ..loaders import inspect
from ..loaders.export.convert import convert_dit
from ..loaders.export.writer import EXPORT_FORMATS
from ..loaders.inspector import COMPONENTS
from ..loaders.lora.spec import LoraSpec
from . import host
from .dit_loader_node import LORA_SLOTS, NO_LORA, ONLY_MODEL, check_file, chosen_file, file_input, model_input

log = logging.getLogger(__name__)

OUTPUT_KEY = "diffusion_models"
SUFFIX = ".safetensors"
DEFAULT_FORMAT = "lightx2v-fp8"


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _count(parameters: int) -> str:
    return f"{parameters / 1e9:.1f}B" if parameters >= 1e9 else f"{parameters / 1e6:.1f}M"


def _model_lines(model: dict[str, Any]) -> list[str]:
    if not model["supported"]:
        return [f"{model['name']}: {model['model']}, not supported yet"]
    role = f", {model['role']}-noise expert" if model["role"] else ""
    quant = model["quantization"]
    family, variant = model["family"], model["variant"].upper()
    # "Wan2.1 T2V"; a family the file does not settle is a phrase of its own: "T2V, Wan2.1 or Wan2.2 (...)"
    kind = f"{family} {variant}" if " " not in family else f"{variant}, {family}"
    return [f"{model['name']}: {kind}, {model['size']}, "
            f"{_count(model['parameters'])} parameters{role}",
            f"  layout {model['layout']} ({model['files']} file{'s' * (model['files'] != 1)}, "
            f"{model['key_names']} key names)",
            f"  precision {model['precision']} ({quant['description']})"]


def report_text(report: dict[str, Any]) -> str:
    """`loaders.inspect`'s report as a short summary: each model (family, variant, size, role, layout, precision
    and quantization), the components found and missing beside it, a LightX2V config's choices, then the hints."""
    models = report["models"]
    lines = [f"{len(models)} models in this folder; pick one with 'file':"] if report["kind"] == "choices" else []
    for model in models:
        lines += _model_lines(model)
    components = report["components"]
    found = [label for field, label in COMPONENTS.items() if components.get(field)]
    lines.append(f"components in {components['searched']}: found {', '.join(found) or 'none'}; missing "
                 f"{', '.join(components['missing']) or 'none'}")
    if (config := report.get("lightx2v_config")) is not None:
        loras = ", ".join(path.rsplit("/", 1)[-1] for path in config["loras"]) or "none"
        lines.append(f"LightX2V config: quantization {config['quantization']}, LoRAs {loras}")
    # the inspector's hint on missing components repeats the components line
    repeated = f"not found in {components['searched']}:"
    lines += [f"- {hint}" for hint in report["hints"] if not hint.startswith(repeated)]
    return "\n".join(lines)


MAX_NAME_BYTES = 200  # file systems allow 255; room for ".safetensors" and the temporary name's suffix


def export_name(filename: str) -> str:
    """The file name an export is written under in ``models/diffusion_models/``: ``.safetensors`` added when
    missing; a folder, ``..`` or a hidden name is refused, so nothing is written anywhere else."""
    name = filename.strip()
    if not name:
        raise InvalidInputError("filename is empty: give the name of the file to write, e.g. my_model_fp8")
    if "\0" in name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidInputError(f"filename {name[:40]!r}...: give a plain file name of at most {MAX_NAME_BYTES} "
                                "bytes without control characters")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise InvalidInputError(f"filename {name!r}: give a plain file name (no folder, '..' or leading dot); the "
                                f"export is always written to models/{OUTPUT_KEY}/")
    return name if name.lower().endswith(SUFFIX) else name + SUFFIX


def _lora_inputs(slot: str) -> dict:
    return {
        slot: ([NO_LORA] + host.list_files("loras"), {"default": NO_LORA, "tooltip": "A LoRA from models/loras/ "
               "merged into the exported weights (before quantization), e.g. LightX2V's 4-step distill LoRA."}),
        f"{slot}_strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip":
                               f"Multiplier of {slot}'s change (1 as trained). Ignored while the LoRA is "
                               "(none)."}),
    }


class WanExpressInspect:
    """Describes a DiT file or folder as Wan Express reads it, without loading it."""

    CATEGORY = "Wan Express/tools"
    DESCRIPTION = ("Describe a Wan model without loading it: family, variant, size, layout, precision and "
                   "quantization, Wan2.2 expert role, the umT5 / tokenizer / VAE / CLIP files found beside it and "
                   "what is missing, with hints (the same report as 'python -m wan_express inspect'). The text "
                   "shows on the node after a run, and leaves as 'report'.")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_TOOLTIPS = ("The summary as text.",)
    OUTPUT_NODE = True
    FUNCTION = "describe"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": model_input("The model to describe")}, "optional": {"file": file_input()}}

    @classmethod
    def VALIDATE_INPUTS(cls, file: str = ONLY_MODEL):
        return check_file(file)

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")  # reads only headers: describe the files as they are now, every run

    def describe(self, model: str, file: str = ONLY_MODEL):
        report = inspect(host.resolve_model(OUTPUT_KEY, model), chosen_file(file))
        text = host.user_paths(report_text(report))
        return {"ui": {"text": [text]}, "result": (text,)}


class WanExpressConvert:
    """Merges LoRAs into a DiT and writes it as one LightX2V or ComfyUI file in models/diffusion_models/."""

    CATEGORY = "Wan Express/tools"
    DESCRIPTION = ("Export a Wan DiT as one file in models/diffusion_models/, with up to two LoRAs merged and the "
                   "weights re-quantized for the chosen format (the same work as 'python -m wan_express convert'). "
                   "Wan2.2 A14B: one expert per export (file high_noise_model/ or low_noise_model/). The file is "
                   "written under a temporary name and renamed when complete, so a cancelled export leaves none. "
                   "Load the result with the DiT loader (refresh the page to list it).")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_TOOLTIPS = ("The written file's name in models/diffusion_models/ (the DiT loader's model choice).",)
    OUTPUT_NODE = True
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls):
        formats = "; ".join(f"{name}: {fmt.description}" for name, fmt in sorted(EXPORT_FORMATS.items()))
        return {
            "required": {
                "model": model_input("The model to export"),
                "format": (sorted(EXPORT_FORMATS), {"default": DEFAULT_FORMAT, "tooltip": formats}),
                "filename": ("STRING", {"default": "wan_express_export", "tooltip": "Name of the file to write in "
                             "models/diffusion_models/ (.safetensors is added); no folders."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace a file of that name; off, an "
                              "existing file stops the export."}),
            },
            "optional": {"file": file_input(), **_lora_inputs("lora"), **_lora_inputs("lora_2")},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, file: str = ONLY_MODEL, filename: str | None = None):
        if filename is not None:
            try:
                export_name(filename)
            except InvalidInputError as error:
                return str(error)
        return check_file(file)

    def convert(self, model: str, format: str, filename: str, overwrite: bool, file: str = ONLY_MODEL, **loras):
        name = export_name(filename)
        output = host.output_folder(OUTPUT_KEY) / name
        if output.exists() and not overwrite:
            raise InvalidInputError(f"models/{OUTPUT_KEY}/{name} already exists; turn overwrite on to replace it, "
                                    "or choose another filename")
        specs = [LoraSpec(host.resolve_file("loras", loras[slot]), loras.get(f"{slot}_strength", 1.0))
                 for slot in LORA_SLOTS if loras.get(slot, NO_LORA) != NO_LORA]
        inside = chosen_file(file)
        started = time.perf_counter()
        written = convert_dit(host.resolve_model(OUTPUT_KEY, model), output, format, specs, file=inside,
                              source=model + (inside or ""), progress=host.progress_bar(check_interrupt=True))
        text = (f"wrote models/{OUTPUT_KEY}/{name}: {format}, {written['tensors']} tensors, "
                f"{_size(written['bytes'])}, {written['loras']} LoRA(s) merged, in "
                f"{time.perf_counter() - started:.1f} s")
        log.info(text)
        return {"ui": {"text": [text]}, "result": (name,)}
