"""Node: load a Wan DiT (or a Wan2.2 A14B expert pair) from a model folder, single file or LightX2V config as core
``MODEL``s (see `native`), with up to two LoRAs merged at load (e.g. LightX2V's 4-step distill LoRA, or its
high-noise / low-noise pair for Wan2.2 A14B): merged into float weights before ``fp8``/``int8`` quantization, so a
quantized-at-load model is rounded once, which a LoRA node downstream of the loader cannot do."""

from __future__ import annotations

from ..expert_names import BOTH, EXPERTS
from ..kernels.ops import ATTENTION_BACKENDS
from ..loaders import DitPlan, load_planned, plan_dit
from ..loaders.lora.spec import LoraSpec
from . import host
from .native import NativeOps, NativeWanDiT, core_model
from .values import DTYPES

QUANTIZATION = ("auto", "fp8", "int8", "bf16")
NO_LORA = "(none)"
# auto: the file name's high_noise / low_noise (or high / low) token picks the Wan2.2 expert, else both.
LORA_EXPERTS = ("auto", *EXPERTS, BOTH)
_EXPERT_CHOICE = {"auto": None, **{expert: expert for expert in (*EXPERTS, BOTH)}}
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
    """Loads a Wan2.1 / Wan2.2 DiT (folder, single file or LightX2V config) as core MODELs running Wan Express code."""

    CATEGORY = "Wan Express/loaders"
    DESCRIPTION = ("Load a Wan DiT: an official folder from models/wan_express/ (config.json + shards, or a Wan2.2 "
                   "A14B folder with high_noise_model/ and low_noise_model/) or a single safetensors from "
                   "models/diffusion_models/ (LightX2V, ComfyUI or official names; BF16, FP8 or INT8). The "
                   "architecture is read from the weights. Official (non-distilled) weights need LightX2V's "
                   "4-step distill LoRA (lora / lora_2, from models/loras/) for the 4-step distill schedule; "
                   "LightX2V's distilled model files need none.")
    RETURN_TYPES = ("MODEL", "MODEL")
    RETURN_NAMES = ("model", "model_low")
    OUTPUT_TOOLTIPS = ("The Wan model, a core MODEL (for core KSampler, ModelSamplingSD3, LoRA loaders too); for a "
                       "Wan2.2 A14B pair the high-noise expert, which runs the first steps.",
                       "Wan2.2 A14B pair only: the low-noise expert, which runs the last steps (empty otherwise).")
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
                "attention": (list(ATTENTION_BACKENDS), {"default": "auto", "tooltip": "PyTorch attention kernel: "
                              "auto lets PyTorch choose (flash / cuDNN on recent GPUs); the others ask for one, "
                              "falling back to math where it cannot run."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, model: str, quantization: str, dtype: str, file: str = "", attention: str = "auto",
                   **loras):
        """Changes when a file the load reads changes on disk (mtime, size: DiT weights, a LightX2V config and
        the LoRAs it names, the chosen LoRAs), or an option does."""
        return repr((_plan(model, quantization, file, loras).stamp(), dtype, attention))

    def load(self, model: str, quantization: str, dtype: str, file: str = "", attention: str = "auto", **loras):
        plan = _plan(model, quantization, file, loras)
        # Built where ComfyUI keeps idle models; its memory manager brings each to the GPU when a sampler runs it.
        built = load_planned(plan, dtype=DTYPES[dtype], device=host.offload_device(),
                             ops_factory=lambda layers: NativeOps(layers, attention=attention),
                             model_class=NativeWanDiT)
        experts = built if plan.is_pair else (built,)
        models = [core_model(expert) for expert in experts]
        return (models[0], models[1] if plan.is_pair else None)


def _plan(model: str, quantization: str, file: str, loras: dict) -> DitPlan:
    """The one resolution both IS_CHANGED and load use: the widgets as a `DitPlan`."""
    specs = [LoraSpec(host.resolve_file("loras", loras[slot]), loras.get(f"{slot}_strength", 1.0),
                      expert=_EXPERT_CHOICE[loras.get(f"{slot}_expert", "auto")])
             for slot in LORA_SLOTS if loras.get(slot, NO_LORA) != NO_LORA]
    return plan_dit(host.resolve_model("diffusion_models", model), file.strip() or None, loras=specs,
                    quantization=quantization)
