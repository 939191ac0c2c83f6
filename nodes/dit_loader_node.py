"""Node: load a Wan DiT (or a Wan2.2 A14B expert pair) from a model folder, single file or LightX2V config as core
``MODEL``s (see `native`), with up to two LoRAs merged at load (e.g. LightX2V's 4-step distill LoRA, or its
high-noise / low-noise pair for Wan2.2 A14B): merged into float weights before ``fp8``/``int8`` quantization, so a
quantized-at-load model is rounded once, which a LoRA node downstream of the loader cannot do."""

from __future__ import annotations

from ..expert_names import BOTH, EXPERTS
from ..kernels.compile import COMPILE_MODES, compile_dit
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
NO_VACE_MODULE = "(none)"
# The `file` choice for a folder that holds one model; "" is what workflows saved before `file` was a list.
ONLY_MODEL = "(the only model)"
_NO_FILE = (ONLY_MODEL, "")


def model_input(what: str = "Model") -> tuple:
    """The ``model`` input of the loader and tool nodes: model folders, single files and LightX2V configs."""
    return (host.list_models("diffusion_models") + host.lightx2v_configs(),
            {"tooltip": f"{what}: a folder of models/wan_express/ (ends with /), a file of "
                        "models/diffusion_models/, or a LightX2V config (.json) of models/wan_express/."})


def file_input() -> tuple:
    """The optional ``file`` input: which model inside a folder holding several (a static list, so it gathers
    the models of every such folder; the one picked must be in the chosen folder)."""
    return ([ONLY_MODEL, *host.folder_model_choices()],
            {"default": ONLY_MODEL, "tooltip": "Only for a folder of models/wan_express/ holding several models "
             "(e.g. bf16 + fp8 + int8 side by side): the one to use. The list gathers every such folder's models; "
             "pick one of the chosen folder. For a Wan2.2 A14B folder, high_noise_model/ or low_noise_model/ "
             "takes one expert alone. (the only model) for everything else."})


def chosen_file(file: str) -> str | None:
    """The ``file`` widget as the library's ``file`` argument (None: the folder's only model)."""
    return None if file.strip() in _NO_FILE else file.strip()


def check_file(file: str | None) -> bool | str:
    """Queue-time check of ``file``: one of the listed models, or "" as older workflows saved it (None: linked
    from another node, known only when it runs)."""
    if file is None or file.strip() in _NO_FILE or file in host.folder_model_choices():
        return True
    return (f"file {file!r} is not a model of any folder in models/wan_express/ holding several; pick one from "
            f"the list, or {ONLY_MODEL}")


def _lora_inputs(slot: str) -> dict:
    return {
        slot: ([NO_LORA] + host.list_files("loras"), {"default": NO_LORA, "tooltip": "A LoRA from models/loras/, "
               "merged into the weights at load (before fp8/int8 quantization, so the 4-step speed stays), e.g. "
               "LightX2V's *_lora_rank64_lightx2v_4step*.safetensors distill LoRA."}),
        f"{slot}_strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip":
                               f"Multiplier of {slot}'s change (1 as trained, 0 turns it off, negative reverses "
                               "it). Ignored while the LoRA is (none)."}),
        f"{slot}_expert": (list(LORA_EXPERTS), {"default": "auto", "tooltip": "Wan2.2 A14B: which expert takes "
                           "this LoRA. auto follows the file name (high_noise / low_noise), else both. Ignored "
                           "for single models, which take every LoRA."}),
    }


def vace_module_input() -> tuple:
    """The optional ``vace_module`` input: a VACE module file of models/diffusion_models/ to attach."""
    return ([NO_VACE_MODULE] + host.list_files("diffusion_models"),
            {"default": NO_VACE_MODULE, "tooltip": "Wan2.1 VACE as a module file (only the vace_* tensors, e.g. "
             "Wan2_1-VACE_module_1_3B_bf16.safetensors) from models/diffusion_models/: attached to the Wan2.1 T2V "
             "model above (same size, 1.3B or 14B), which then takes VACE conditioning. (none) for everything "
             "else, and for a full VACE model."})


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
                "model": model_input(),
                "quantization": (list(QUANTIZATION), {"default": "auto", "tooltip": "auto keeps what the file "
                                 "holds; fp8/int8 quantize float weights per channel at load; bf16 runs unquantized."}),
                "dtype": (list(DTYPES), {"default": "bf16", "tooltip": "Precision of the float matmul weights; "
                                         "norms, modulation and the head always run in fp32."}),
            },
            "optional": {
                "file": file_input(),
                **_lora_inputs("lora"),
                **_lora_inputs("lora_2"),
                "attention": (list(ATTENTION_BACKENDS), {"default": "auto", "tooltip": "Attention kernel: "
                              "auto runs PyTorch's attention with cuDNN's kernel first (on an H200 1.6x faster than "
                              "flash and still faster than the pack's 8-bit kernel); sage8 / sage8_bf16pv use the 8-bit kernel (FP8 or bf16 P·V, "
                              "less memory traffic, slightly less exact); flash, efficient, cudnn and math ask PyTorch "
                              "for one, falling back to math where it cannot run."}),
                "compile": (list(COMPILE_MODES), {"default": "off", "tooltip": "torch.compile: block compiles "
                            "each transformer block (one graph shared by all), full the whole forward (one graph, "
                            "recompiles per resolution). The first run of a new resolution takes longer."}),
                "vace_module": vace_module_input(),
                # Last, so workflows saved before it keep their widget values in place (it takes its default).
                "ffn_chunk_tokens": ("INT", {"default": 0, "min": 0, "step": 1024,
                                     "tooltip": "Run each block's feed-forward over chunks of this many tokens "
                                     "(0: all at once): lowers peak VRAM at long videos, where the feed-forward's "
                                     "intermediates are the largest activations, at a small speed cost; the result "
                                     "is the same up to rounding."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, file: str = ONLY_MODEL):
        """Checks ``file`` itself (core then skips its list check), so that workflows saved with "" still run."""
        return check_file(file)

    @classmethod
    def IS_CHANGED(cls, model: str, quantization: str, dtype: str, file: str = ONLY_MODEL, attention: str = "auto",
                   compile: str = "off", vace_module: str = NO_VACE_MODULE, ffn_chunk_tokens: int = 0, **loras):
        """Changes when a file the load reads changes on disk (mtime, size: DiT weights, a LightX2V config and
        the LoRAs it names, the chosen LoRAs, the VACE module), or an option does."""
        module = _vace_module(vace_module)
        module_stamp = None if module is None else (str(module), module.stat().st_mtime_ns, module.stat().st_size)
        return repr((_plan(model, quantization, file, loras).stamp(), module_stamp, dtype, attention, compile,
                     ffn_chunk_tokens))

    def load(self, model: str, quantization: str, dtype: str, file: str = ONLY_MODEL, attention: str = "auto",
             compile: str = "off", vace_module: str = NO_VACE_MODULE, ffn_chunk_tokens: int = 0, **loras):
        plan = _plan(model, quantization, file, loras)
        # Built where ComfyUI keeps idle models; its memory manager brings each to the GPU when a sampler runs it.
        built = load_planned(plan, dtype=DTYPES[dtype], device=host.offload_device(),
                             ops_factory=native_ops(attention, ffn_chunk_tokens),
                             model_class=NativeWanDiT, interrupt=host.interrupt_check(),
                             vace_module=_vace_module(vace_module))
        experts = built if plan.is_pair else (built,)
        models = [core_model(compile_dit(expert, compile)) for expert in experts]
        return (models[0], models[1] if plan.is_pair else None)


def native_ops(attention: str = "auto", ffn_chunk_tokens: int = 0):
    """The loader's operations factory (quantization schemes -> `NativeOps`) for its ``attention`` and
    ``ffn_chunk_tokens`` widgets."""
    return lambda layers: NativeOps(layers, attention=attention, ffn_chunk_tokens=ffn_chunk_tokens)


def _vace_module(choice: str):
    """The ``vace_module`` widget as the library's ``vace_module`` path (None: (none))."""
    return None if choice in (NO_VACE_MODULE, "") else host.resolve_file("diffusion_models", choice)


def _plan(model: str, quantization: str, file: str, loras: dict) -> DitPlan:
    """The one resolution both IS_CHANGED and load use: the widgets as a `DitPlan`."""
    specs = [LoraSpec(host.resolve_file("loras", loras[slot]), loras.get(f"{slot}_strength", 1.0),
                      expert=_EXPERT_CHOICE[loras.get(f"{slot}_expert", "auto")])
             for slot in LORA_SLOTS if loras.get(slot, NO_LORA) != NO_LORA]
    return plan_dit(host.resolve_model("diffusion_models", model), chosen_file(file), loras=specs,
                    quantization=quantization)
