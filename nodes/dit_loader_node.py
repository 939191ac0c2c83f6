"""Node: load a Wan DiT (or a Wan2.2 A14B expert pair) from a model folder or single file, with up to two LoRAs
merged at load (e.g. LightX2V's 4-step distill LoRA, or its high-noise / low-noise pair for Wan2.2 A14B)."""

from __future__ import annotations

from pathlib import Path


from ..expert_names import EXPERTS
from ..loaders import load_dit
from ..loaders.dit.folders import ModelPair
from ..loaders.dit.loader import lightx2v_config_of, resolve_target
from ..loaders.lora.spec import LoraSpec
from . import host
from .values import DTYPES

QUANTIZATION = ("auto", "fp8", "int8", "bf16")
NO_LORA = "(none)"
# auto: the file name's high_noise / low_noise (or high / low) token picks the Wan2.2 expert, else both.
LORA_EXPERTS = ("auto", *EXPERTS, "both")
LORA_SLOTS = ("lora", "lora_2")


def _lora_inputs(slot: str) -> dict:
    return {
        slot: ([NO_LORA] + host.list_files("loras"), {"default": NO_LORA, "tooltip": "A LoRA from models/loras/, "
               "merged into the weights at load (before fp8/int8 quantization, so the 4-step speed stays), e.g. "
               "LightX2V's *_lora_rank64_lightx2v_4step*.safetensors distill LoRA."}),
        f"{slot}_strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05}),
        f"{slot}_expert": (list(LORA_EXPERTS), {"default": "auto", "tooltip": "Wan2.2 A14B: which expert takes "
                           "this LoRA. auto follows the file name (high_noise / low_noise), else both. Ignored "
                           "for single models, which take every LoRA."}),
    }


class WanExpressDiTLoader:
    """Loads a Wan2.1 / Wan2.2 DiT (official folder or single safetensors) for the Wan Express sampler."""

    CATEGORY = "Wan Express/loaders"
    DESCRIPTION = ("Load a Wan DiT: an official folder from models/wan_express/ (config.json + shards, or a Wan2.2 "
                   "A14B folder with high_noise_model/ and low_noise_model/) or a single safetensors from "
                   "models/diffusion_models/ (LightX2V, ComfyUI or official names; BF16, FP8 or INT8). The "
                   "architecture is read from the weights. Official (non-distilled) weights need LightX2V's "
                   "4-step distill LoRA (lora / lora_2, from models/loras/) for the 4-step distill schedule; "
                   "LightX2V's distilled model files need none.")
    RETURN_TYPES = ("WANEXPRESS_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The loaded Wan diffusion transformer (a high/low pair for Wan2.2 A14B folders).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (host.list_models("diffusion_models") + host.lightx2v_configs(),
                          {"tooltip": "Model folder (ends with /), file, or a LightX2V config (.json)."}),
                "quantization": (list(QUANTIZATION), {"default": "auto", "tooltip": "auto keeps what the file "
                                 "holds; fp8/int8 quantize float weights per channel at load; bf16 runs unquantized."}),
                "dtype": (list(DTYPES), {"default": "bf16", "tooltip": "Precision of the float matmul weights; "
                                         "norms, modulation and the head always run in fp32."}),
            },
            "optional": {
                "file": ("STRING", {"default": "", "tooltip": "Only for a folder holding several models (e.g. "
                                    "bf16 + fp8 + int8 side by side): the file name to load. Empty picks the "
                                    "only one."}),
                **_lora_inputs("lora"),
                **_lora_inputs("lora_2"),
            },
        }

    @classmethod
    def IS_CHANGED(cls, model: str, quantization: str, dtype: str, file: str = "", **loras):
        """Changes when a file the load reads changes on disk (mtime, size: DiT weights, a LightX2V config and
        the LoRAs it names, the chosen LoRAs), or an option does."""
        path = host.resolve_model("diffusion_models", model)
        target = resolve_target(path, file.strip() or None)
        units = (target.high, target.low) if isinstance(target, ModelPair) else (target,)
        config = lightx2v_config_of(path)
        files = ([path] if path.is_file() else []) + [f for unit in units for f in (*unit.files, unit.config) if f]
        files += [choice.path for choice in config.loras] if config else []
        files += [host.resolve_file("loras", loras[slot]) for slot in LORA_SLOTS if loras.get(slot, NO_LORA) != NO_LORA]
        stamps = [(str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files]
        return repr((stamps, quantization, dtype, file, sorted(loras.items())))

    def load(self, model: str, quantization: str, dtype: str, file: str = "", lora: str = NO_LORA,
             lora_strength: float = 1.0, lora_expert: str = "auto", lora_2: str = NO_LORA,
             lora_2_strength: float = 1.0, lora_2_expert: str = "auto"):
        path = host.resolve_model("diffusion_models", model)
        file = file.strip() or None
        pair = isinstance(resolve_target(path, file), ModelPair)
        specs = [spec for name, strength, expert in ((lora, lora_strength, lora_expert),
                                                     (lora_2, lora_2_strength, lora_2_expert)) if name != NO_LORA
                 for spec in lora_specs(host.resolve_file("loras", name), strength, expert, pair)]
        host.free_gpu_memory()
        # A Wan2.2 pair waits in CPU memory: the sampler brings in the running expert (both, without offload), so
        # two 14B experts never have to fit on the GPU at once.
        return (load_dit(path, file=file, quantization=quantization, loras=specs, dtype=DTYPES[dtype],
                         device="cpu" if pair else host.torch_device()),)


def lora_specs(path: Path, strength: float, expert: str, pair: bool) -> list[LoraSpec]:
    """The node's LoRA choice as `LoraSpec`s: ``both`` on an A14B pair is one spec per expert (overriding a
    high/low token in the file name); ``auto`` leaves the choice to the file name; a single model takes it once."""
    if expert == "both" and pair:
        return [LoraSpec(path, strength, expert=role) for role in EXPERTS]
    return [LoraSpec(path, strength, expert=expert if expert in EXPERTS else None)]
