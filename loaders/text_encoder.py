"""Load the umT5-XXL text encoder and its tokenizer: official ``.pth`` or ComfyUI / Hugging Face safetensors.

Entry point: `load_text_encoder(path, tokenizer=None) -> TextEncoder` (``.encode(prompts)``). Keys are mapped to
official names (spec formats.md §8.1); FP8 files (legacy ``scale_weight`` or ``weight_scale``) become the
canonical quantized form of kernels/quantized.py and run through `QuantOps`.
"""

from __future__ import annotations

import html
import logging
import math
import re
from pathlib import Path

import torch

from ..errors import MissingComponentError, ModelFormatError, WanExpressError
from ..kernels.quantized import QuantOps, QuantScheme
from ..models.t5 import TextEncoder, UMT5Encoder
from .components import TOKENIZER_DIR, TOKENIZER_FILE
from .dit.formats import CODES_OF_DTYPE
from .files import TensorEntry, TensorView, open_tensors
from .quantization import LastLayerQuantizer

log = logging.getLogger(__name__)

TEXT_LEN = 512
QUANTIZATION_MODES = ("auto", "fp8")

# Hugging Face / ComfyUI T5 names -> official names (formats.md §8.1), applied in order, first match wins.
HF_TO_OFFICIAL = (
    (r"^shared\.weight$", "token_embedding.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"blocks.\1.norm1."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.",
     r"blocks.\1.pos_embedding.embedding."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.", r"blocks.\1.attn.\2."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"blocks.\1.norm2."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.", r"blocks.\1.ffn.gate.0."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.", r"blocks.\1.ffn.fc1."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.", r"blocks.\1.ffn.fc2."),
    (r"^encoder\.final_layer_norm\.", "norm."),
)
_HF_RULES = tuple((re.compile(pattern), replacement) for pattern, replacement in HF_TO_OFFICIAL)
# Tensors that carry no weights of the encoder: ComfyUI's scaled-FP8 marker and embedded SentencePiece model,
# per-layer activation scales and quantization metadata (the reference linear never uses them).
IGNORED_KEYS = re.compile(r"^(scaled_fp8|spiece_model)$|\.(scale_input|input_scale|comfy_quant)$")
# The layers the "fp8" option quantizes: every block Linear (the token embedding is a lookup).
BLOCK_LINEAR = re.compile(r"^blocks\.\d+\.(attn\.[qkvo]|ffn\.(gate\.0|fc1|fc2))$")
_SCALE_SUFFIXES = (".weight_scale", ".scale_weight")
# Official cleaning: ftfy, HTML-unescape twice, collapse runs of Unicode White_Space (what `regex`'s \s matches;
# Python's \s would also eat U+001C..U+001F).
_WHITESPACE = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def clean_prompt(text: str) -> str:
    """The official prompt cleaning: ``ftfy.fix_text`` (mojibake, curly quotes, ligatures, NFC), HTML-unescape
    twice, collapse whitespace, strip."""
    try:  # imported here so the pack still loads (and says what is missing) where requirements.txt was skipped
        import ftfy
    except ImportError:
        raise WanExpressError("the official prompt cleaning needs the ftfy package: pip install -r "
                              "requirements.txt (or pip install ftfy) in ComfyUI's Python") from None
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


class UMT5Tokenizer:
    """The official tokenization on the ``tokenizers`` library: clean, add ``</s>``, truncate and pad to 512.

    Args:
        folder: folder holding ``tokenizer.json`` (the official ``google/umt5-xxl/``).
        length: padded length (512 in Wan).
    """

    def __init__(self, folder: str | Path, length: int = TEXT_LEN):
        from tokenizers import Tokenizer  # imported here so the pack imports without it until text is encoded

        path = Path(folder) / TOKENIZER_FILE
        if not path.is_file():
            raise MissingComponentError(f"{path}: umT5 tokenizer not found; pass the folder holding {TOKENIZER_FILE} "
                                        f"(the official {TOKENIZER_DIR}/)")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the tokenizers library raises plain Exceptions for a bad file
            raise ModelFormatError(f"{path}: not a readable tokenizer.json ({error})") from None
        pad_id = self.tokenizer.token_to_id("<pad>")
        if pad_id is None:
            raise ModelFormatError(f"{path}: the vocabulary has no <pad> token; is this the umT5 tokenizer?")
        self.tokenizer.enable_truncation(max_length=length)
        self.tokenizer.enable_padding(length=length, pad_id=pad_id, pad_token="<pad>")

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> ids [B, length] int64, mask [B, length] int64 (1 on real tokens, ``</s>`` included)."""
        encodings = self.tokenizer.encode_batch([clean_prompt(text) for text in prompts], add_special_tokens=True)
        ids = torch.tensor([encoding.ids for encoding in encodings], dtype=torch.long)
        mask = torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.long)
        return ids, mask


def _official_name(key: str) -> str:
    for pattern, replacement in _HF_RULES:
        if pattern.search(key):
            return pattern.sub(replacement, key)
    return key


def _scheme_for(codes_dtype: torch.dtype, scale_shape: tuple[int, ...], rows: int) -> QuantScheme | None:
    """The canonical scheme of a stored (codes, scale) pair; None where the codes have no canonical form."""
    codes = CODES_OF_DTYPE.get(codes_dtype)
    if codes is None:
        return None
    count = math.prod(scale_shape)
    return QuantScheme(codes, "tensor" if count == 1 else "channel") if count in (1, rows) else None


def canonical_text_encoder(tensors: TensorView, *, quantization: str = "auto", device: torch.device | str = "cpu",
                           source: str = "state dict") -> tuple[TensorView, dict[str, QuantScheme]]:
    """Official-named tensors (canonical quantized form) and the quantized-layer table of a T5 file.

    Stored FP8/INT8 Linears keep their codes (scale -> ``weight_scale`` ``[out, 1]`` or ``[1, 1]``); other stored
    quantized tensors (e.g. an FP8 embedding or e5m2 codes) are dequantized. ``quantization="fp8"`` also
    quantizes float block Linears per output channel (kernels.quantize) on ``device``. Shapes and dtypes come from
    ``tensors``' entries (a safetensors header), so no weight is read before the model asks for it.
    """
    if quantization not in QUANTIZATION_MODES:
        raise ValueError(f"quantization must be one of {QUANTIZATION_MODES}, not {quantization!r}")
    shapes = tensors.shapes()
    names = {key: _official_name(key) for key in shapes if not IGNORED_KEYS.search(key)}
    # encoder.embed_tokens is an alias of shared in HF files; use it only when shared is absent.
    if "encoder.embed_tokens.weight" in names:
        del names["encoder.embed_tokens.weight"]
        if "shared.weight" not in shapes and "token_embedding.weight" not in shapes:
            names["encoder.embed_tokens.weight"] = "token_embedding.weight"
    scales: dict[str, str] = {}  # layer -> key of its stored scale
    for key, name in list(names.items()):
        suffix = next((suffix for suffix in _SCALE_SUFFIXES if name.endswith(suffix)), None)
        if suffix is not None:
            del names[key]
            scales[name.removesuffix(suffix)] = key
    entries: dict[str, TensorEntry] = {}
    layers: dict[str, QuantScheme] = {}
    quantizer = LastLayerQuantizer()
    for key, name in names.items():
        stored, layer = tensors.entries[key], name.removesuffix(".weight")
        entry = stored
        scale_key = scales.pop(layer, None) if name.endswith(".weight") else None
        if scale_key is not None:
            scheme = _scheme_for(stored.dtype, shapes[scale_key], stored.shape[0])
            if scheme is not None and BLOCK_LINEAR.search(layer):
                layers[layer] = scheme
                scale_shape = scheme.scale_shape(stored.shape[0])
                entries[f"{layer}.weight_scale"] = TensorEntry(
                    scale_shape, torch.float32,
                    lambda scale_key=scale_key, s=scale_shape: tensors[scale_key].float().reshape(s))
            else:
                entry = TensorEntry(stored.shape, torch.float32,
                                    lambda key=key, scale_key=scale_key: _dequantize(tensors[key], tensors[scale_key]))
        elif quantization == "fp8" and BLOCK_LINEAR.search(layer) and len(stored.shape) == 2:
            scheme = layers[layer] = QuantScheme("fp8_e4m3", "channel")
            weight = TensorEntry(stored.shape, stored.dtype, lambda read=stored.read: read().to(device))
            entries[f"{layer}.weight_scale"] = TensorEntry(
                scheme.scale_shape(stored.shape[0]), torch.float32,
                lambda layer=layer, w=weight, scheme=scheme: quantizer.get(layer, w, scheme, 1))
            entry = TensorEntry(stored.shape, scheme.dtype,
                                lambda layer=layer, w=weight, scheme=scheme: quantizer.get(layer, w, scheme, 0))
        entries[name] = entry
    if scales:
        raise ModelFormatError(f"{source}: scale tensors without a weight: {', '.join(sorted(scales.values())[:4])}")
    return TensorView(entries, source), layers


def _dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    scale = scale.float()
    if scale.numel() not in (1, codes.shape[0]):
        raise ModelFormatError(f"a scale of shape {tuple(scale.shape)} does not fit a weight of {tuple(codes.shape)}")
    return codes.float() * scale.reshape(-1, *([1] * (codes.dim() - 1)))


def read_text_encoder_file(path: Path) -> TensorView:
    """The raw tensors of a T5 file (``.pth``/``.pt`` or ``.safetensors``), read lazily through `open_tensors`."""
    return open_tensors(path, what="text encoder file")


def load_text_encoder(path: str | Path, tokenizer: str | Path | None = None, *, dtype: torch.dtype = torch.bfloat16,
                      device: torch.device | str = "cpu", quantization: str = "auto") -> TextEncoder:
    """Load umT5-XXL (official ``.pth`` or HF/ComfyUI ``.safetensors``, float or FP8) with its tokenizer.

    Args:
        path: the encoder weights.
        tokenizer: folder holding ``tokenizer.json``; default ``google/umt5-xxl/`` next to ``path`` (where the
            official folder has it; ComfyUI's text-encoder files carry no tokenizer.json, so pass it for those).
        dtype: weights and activations (official: bf16; fp32 for exact CPU runs).
        device: where the encoder runs ("cpu" works, slowly for the full model).
        quantization: "auto" runs the weights as stored (FP8 files stay FP8); "fp8" also quantizes float block
            Linears to per-channel FP8 E4M3 (half the memory; dequantized per matmul by the reference linear).

    Returns:
        `TextEncoder`: ``encode(list[str]) -> list[Tensor [L_i, 4096]]``.
    """
    path = Path(path)
    tokenizer_folder = Path(tokenizer) if tokenizer is not None else path.parent / TOKENIZER_DIR
    if tokenizer_folder.is_file() and tokenizer_folder.name == TOKENIZER_FILE:
        tokenizer_folder = tokenizer_folder.parent
    text_tokenizer = UMT5Tokenizer(tokenizer_folder)
    tensors, layers = canonical_text_encoder(read_text_encoder_file(path), quantization=quantization,
                                             device=device, source=str(path))
    model = UMT5Encoder.from_state_dict(tensors, dtype=dtype, device=device, ops=QuantOps(layers), source=str(path))
    config = model.config
    log.info("umT5 encoder from %s: dim %d, %d blocks, %s on %s%s", path.name, config.dim, config.num_layers,
             str(dtype).removeprefix("torch."), device,
             f", {len(layers)} quantized Linears ({next(iter(layers.values())).codes})" if layers else "")
    return TextEncoder(model, text_tokenizer)
