"""Load the umT5-XXL text encoder and its tokenizer: official ``.pth`` or ComfyUI / Hugging Face safetensors.

Entry point: `load_text_encoder(path, tokenizer=None) -> TextEncoder` (``.encode(prompts)``). Keys are mapped to
official names (spec formats.md §8.1, the umT5's rename); quantized files go through the pipeline the DiT uses
(`.quantization`): its block Linears keep their codes and run through `QuantOps`, other quantized tensors are
dequantized. The tokenizer is the official ``google/umt5-xxl/tokenizer.json`` (`UMT5Tokenizer`) or the
SentencePiece model ComfyUI embeds in its umT5 files (`SentencePieceTokenizer`); both tokenize the same way.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Collection

import torch

from ..errors import MissingComponentError, ModelFormatError, WanExpressError
from ..kernels.quantized import QuantOps, QuantScheme
from ..models.t5 import TextEncoder, UMT5Encoder
from .components import TOKENIZER_DIR, TOKENIZER_FILE
from .files import TensorView, open_tensors
from .files.boundary import boundary, shown
from .quantization import Rename, canonicalize, dequantized, quantized

log = logging.getLogger(__name__)

TEXT_LEN = 512
QUANTIZATION_MODES = ("auto", "fp8")

# Hugging Face / ComfyUI T5 names -> official names (formats.md §8.1), applied in order, first match wins.
HF_TO_OFFICIAL = (
    (r"^shared\.", "token_embedding."),
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
# ComfyUI's umT5 files embed umT5's SentencePiece model under this key: the model file's bytes as a uint8 tensor.
SPIECE_KEY = "spiece_model"
# Stored tensors that are no part of the encoder.
NOT_ENCODER_KEYS = (SPIECE_KEY,)
# HF files may repeat ``shared`` as this alias; it is read only where ``shared`` is absent.
EMBEDDING_ALIAS = "encoder.embed_tokens.weight"
# The umT5's quantization targets: every block Linear, the only layers that run quantized (the token embedding
# is a lookup); a stored quantized tensor elsewhere is dequantized.
BLOCK_LINEAR = re.compile(r"^blocks\.\d+\.(attn\.[qkvo]|ffn\.(gate\.0|fc1|fc2))$")
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
            raise MissingComponentError(f"{shown(path)}: umT5 tokenizer not found; pass the folder holding {TOKENIZER_FILE} "
                                        f"(the official {TOKENIZER_DIR}/)")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception:  # the tokenizers library raises plain Exceptions for a bad file
            raise ModelFormatError(f"{shown(path)}: not a readable {TOKENIZER_FILE}") from None
        pad_id = self.tokenizer.token_to_id("<pad>")
        if pad_id is None:
            raise ModelFormatError(f"{shown(path)}: the vocabulary has no <pad> token; is this the umT5 tokenizer?")
        self.tokenizer.enable_truncation(max_length=length)
        self.tokenizer.enable_padding(length=length, pad_id=pad_id, pad_token="<pad>")

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> ids [B, length] int64, mask [B, length] int64 (1 on real tokens, ``</s>`` included)."""
        encodings = self.tokenizer.encode_batch([clean_prompt(text) for text in prompts], add_special_tokens=True)
        ids = torch.tensor([encoding.ids for encoding in encodings], dtype=torch.long)
        mask = torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.long)
        return ids, mask


class SentencePieceTokenizer:
    """The official tokenization on a SentencePiece model (umT5's, as ComfyUI embeds it): clean, add ``</s>``,
    truncate to ``length`` keeping ``</s>`` last, zero-pad. Same ids and mask contract as `UMT5Tokenizer`.

    Args:
        model: the SentencePiece model's serialized bytes (ComfyUI: ``spiece_model`` tensor -> bytes).
        length: padded length (512 in Wan).
        source: named in errors (the file the model came from).
    """

    def __init__(self, model: bytes, length: int = TEXT_LEN, source: str = "SentencePiece model"):
        try:  # imported here so the pack imports without it until such a file is loaded
            import sentencepiece
        except ImportError:
            raise WanExpressError(f"{source}: its embedded tokenizer needs the sentencepiece package: pip install "
                                  "-r requirements.txt (or pip install sentencepiece) in ComfyUI's Python") from None
        self.processor = sentencepiece.SentencePieceProcessor()
        try:
            self.processor.LoadFromSerializedProto(model)
        except Exception:  # sentencepiece raises RuntimeError or OSError for bad bytes
            raise ModelFormatError(f"{source}: the embedded {SPIECE_KEY} is not a SentencePiece model") from None
        self.pad_id, self.end_id = self.processor.pad_id(), self.processor.eos_id()
        if self.pad_id < 0 or self.end_id < 0:
            raise ModelFormatError(f"{source}: the embedded SentencePiece model has no pad or end token; is it the "
                                   "umT5 tokenizer?")
        self.length = length

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> ids [B, length] int64, mask [B, length] int64 (1 on real tokens, ``</s>`` included)."""
        ids = torch.full((len(prompts), self.length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.length, dtype=torch.long)
        for row, text in enumerate(prompts):
            tokens = self.processor.encode(clean_prompt(text))[:self.length - 1] + [self.end_id]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        return ids, mask


def _official_name(key: str) -> str:
    for pattern, replacement in _HF_RULES:
        if pattern.search(key):
            return pattern.sub(replacement, key)
    return key


def umt5_rename(keys: Collection[str]) -> Rename:
    """The umT5's `Rename` for a file holding ``keys``: HF / ComfyUI names -> official names (formats.md §8.1)."""
    alias_used = "shared.weight" not in keys and "token_embedding.weight" not in keys

    def rename(key: str) -> str | None:
        if key in NOT_ENCODER_KEYS:
            return None
        if key == EMBEDDING_ALIAS:
            return "token_embedding.weight" if alias_used else None
        return _official_name(key)
    return rename


def is_umt5_target(name: str, shape: tuple[int, ...]) -> bool:
    """Whether the official-named tensor is the weight of a umT5 block Linear."""
    layer, _, part = name.rpartition(".")
    return len(shape) == 2 and part == "weight" and BLOCK_LINEAR.search(layer) is not None


def canonical_text_encoder(tensors: TensorView, *, quantization: str = "auto", device: torch.device | str = "cpu",
                           source: str = "state dict") -> tuple[TensorView, dict[str, QuantScheme]]:
    """Official-named tensors (canonical quantized form) and the quantized-layer table of a T5 file.

    Stored FP8/INT8 block Linears keep their codes (scale -> ``weight_scale`` ``[out, 1]`` or ``[1, 1]``); other
    stored quantized tensors (e.g. an FP8 embedding) are dequantized. ``quantization="fp8"`` also quantizes the
    other block Linears per output channel on ``device`` (`quantization.quantized`: float ones once, INT8 ones
    re-quantized). Shapes and dtypes come from ``tensors``' entries (a safetensors header), so no weight is read
    before the model asks for it.
    """
    if quantization not in QUANTIZATION_MODES:
        raise ValueError(f"quantization must be one of {QUANTIZATION_MODES}, not {quantization!r}")
    canonical = canonicalize(tensors, umt5_rename(tensors.keys()), metadata=tensors.metadata, source=source)
    shapes = canonical.tensors.shapes()
    runs = {layer: scheme for layer, scheme in canonical.layers.items()
            if is_umt5_target(f"{layer}.weight", shapes[f"{layer}.weight"])}
    view = dequantized(canonical.tensors, {layer: s for layer, s in canonical.layers.items() if layer not in runs})
    if quantization == "fp8":
        return quantized(view, runs, "fp8_e4m3", is_umt5_target, device=device)
    return view, runs


def read_text_encoder_file(path: Path) -> TensorView:
    """The raw tensors of a T5 file (``.pth``/``.pt`` or ``.safetensors``), read lazily through `open_tensors`."""
    return open_tensors(path, name=shown(path), what="text encoder file")


@boundary("umT5 text encoder")
def load_text_encoder(path: str | Path, tokenizer: str | Path | None = None, *, dtype: torch.dtype = torch.bfloat16,
                      device: torch.device | str = "cpu", quantization: str = "auto") -> TextEncoder:
    """Load umT5-XXL (official ``.pth`` or HF/ComfyUI ``.safetensors``, float or FP8) with its tokenizer.

    Args:
        path: the encoder weights.
        tokenizer: folder holding ``tokenizer.json``; default: the SentencePiece model inside the file (ComfyUI's
            ``umt5_xxl_*`` files), else ``google/umt5-xxl/`` next to ``path`` (where the official folder has it).
        dtype: weights and activations (official: bf16; fp32 for exact CPU runs).
        device: where the encoder runs ("cpu" works, slowly for the full model).
        quantization: "auto" runs the weights as stored (FP8 files stay FP8); "fp8" brings every block Linear to
            FP8 E4M3 (float ones per output channel: half the memory; dequantized per matmul by the reference
            linear).

    Returns:
        `TextEncoder`: ``encode(list[str]) -> list[Tensor [L_i, 4096]]``.
    """
    path = Path(path)
    stored = read_text_encoder_file(path)
    text_tokenizer = _tokenizer_of(path, stored, tokenizer)
    tensors, layers = canonical_text_encoder(stored, quantization=quantization, device=device, source=shown(path))
    model = UMT5Encoder.from_state_dict(tensors, dtype=dtype, device=device, ops=QuantOps(layers),
                                        source=shown(path))
    config = model.config
    log.info("umT5 encoder from %s: dim %d, %d blocks, %s on %s%s", path.name, config.dim, config.num_layers,
             str(dtype).removeprefix("torch."), device,
             f", {len(layers)} quantized Linears ({next(iter(layers.values())).codes})" if layers else "")
    return TextEncoder(model, text_tokenizer)


def _tokenizer_of(path: Path, stored: TensorView, tokenizer: str | Path | None):
    """An explicit tokenizer folder, else the file's embedded SentencePiece model, else google/umt5-xxl/ beside it."""
    if tokenizer is None and SPIECE_KEY in stored:
        return SentencePieceTokenizer(stored[SPIECE_KEY].numpy().tobytes(), source=shown(path))
    folder = Path(tokenizer) if tokenizer is not None else path.parent / TOKENIZER_DIR
    if folder.is_file() and folder.name == TOKENIZER_FILE:
        folder = folder.parent
    if tokenizer is None and not (folder / TOKENIZER_FILE).is_file():
        raise MissingComponentError(f"{shown(path)}: no umT5 tokenizer: the file embeds none ({SPIECE_KEY}, which "
                                    f"ComfyUI's umt5_xxl files carry) and {shown(folder)} holds no {TOKENIZER_FILE}; pass "
                                    f"the folder holding {TOKENIZER_DIR}/{TOKENIZER_FILE}")
    return UMT5Tokenizer(folder)
