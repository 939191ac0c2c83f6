"""umT5 text encoder: parity with the official T5 encoder, file layouts (official .pth, HF/ComfyUI safetensors,
scaled FP8), the tokenizer on a tiny tokenizer.json, prompt cleaning and padding invariance."""

from __future__ import annotations

import html
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan_express.errors import MissingComponentError, ModelFormatError
from wan_express.kernels.quantize import quantize_weight
from wan_express.kernels.quantized import QuantLinear, QuantScheme
from wan_express.loaders.components import TEXT_ENCODER_FILE, TOKENIZER_DIR
from wan_express.loaders.text_encoder import clean_prompt, load_text_encoder
from wan_express.models.t5 import UMT5Encoder
from wan_express.synthetic import random_weights_, write_tokenizer

from .official_reference import official_module

TINY = dict(dim=32, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2, num_buckets=32)


def import_official(name: str) -> types.ModuleType:
    """`official_module(name)` on a CPU machine without the reference's unused third-party imports.

    ``t5.py`` reads ``torch.cuda.current_device()`` in a default argument at import time; ``tokenizers.py`` imports
    ftfy and transformers and ``animate/clip.py`` torchvision, none of which the tested code paths call. Absent
    ones get empty stand-ins for the import only (ftfy's ``fix_text`` is the identity there, i.e. the official
    cleaning without ftfy). ``animate/__init__`` (the whole Animate model) is bypassed.
    """
    official_module("attention")  # creates the stand-in package
    if name.startswith("animate.") and "_wan_official_modules.animate" not in sys.modules:
        animate = types.ModuleType("_wan_official_modules.animate")
        animate.__path__ = [str(Path(sys.modules["_wan_official_modules"].__path__[0]) / "animate")]
        sys.modules[animate.__name__] = animate
    if importlib.util.find_spec("transformers") is not None:
        import transformers  # noqa: F401  (it probes for torchvision once, at import: before any stand-in exists)
    stand_ins = {}
    for module_name in ("ftfy", "transformers", "torchvision", "torchvision.transforms"):
        if module_name not in sys.modules and importlib.util.find_spec(module_name.split(".")[0]) is None:
            stand_ins[module_name] = types.ModuleType(module_name)
    if "ftfy" in stand_ins:
        stand_ins["ftfy"].fix_text = lambda text: text
    if "transformers" in stand_ins:
        stand_ins["transformers"].AutoTokenizer = None
    if "torchvision" in stand_ins:
        stand_ins["torchvision"].transforms = stand_ins["torchvision.transforms"]
    current_device = torch.cuda.current_device
    sys.modules.update(stand_ins)
    torch.cuda.current_device = lambda: "cpu"
    try:
        return official_module(name)
    finally:
        torch.cuda.current_device = current_device
        for module_name in stand_ins:
            sys.modules.pop(module_name, None)


def official_encoder(vocab: int, seed: int = 0) -> torch.nn.Module:
    t5 = import_official("t5")
    model = t5.T5Encoder(vocab=vocab, shared_pos=False, dropout=0.1, **TINY).eval()
    random_weights_(model, seed)
    return model


def tokenizer_vocab(folder: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()


def official_to_hf(key: str) -> str:
    """Official -> Hugging Face T5 name, written out rule by rule from formats.md §8.1."""
    if key == "token_embedding.weight":
        return "shared.weight"
    if key == "norm.weight":
        return "encoder.final_layer_norm.weight"
    _, index, rest = key.split(".", 2)
    block = f"encoder.block.{index}.layer"
    table = {
        "norm1.weight": "0.layer_norm.weight", "norm2.weight": "1.layer_norm.weight",
        "attn.q.weight": "0.SelfAttention.q.weight", "attn.k.weight": "0.SelfAttention.k.weight",
        "attn.v.weight": "0.SelfAttention.v.weight", "attn.o.weight": "0.SelfAttention.o.weight",
        "pos_embedding.embedding.weight": "0.SelfAttention.relative_attention_bias.weight",
        "ffn.gate.0.weight": "1.DenseReluDense.wi_0.weight", "ffn.fc1.weight": "1.DenseReluDense.wi_1.weight",
        "ffn.fc2.weight": "1.DenseReluDense.wo.weight",
    }
    return f"{block}.{table[rest]}"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.fixture(scope="module")
def official_folder(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """An official-layout folder: fp32 encoder .pth (official keys) + google/umt5-xxl/tokenizer.json."""
    folder = tmp_path_factory.mktemp("wan_t5")
    tokenizer_folder = write_tokenizer(folder)
    reference = official_encoder(tokenizer_vocab(tokenizer_folder))
    torch.save(reference.state_dict(), folder / TEXT_ENCODER_FILE)
    return folder, reference


PROMPTS = ["the cat sat on the mat, looking at the camera &amp;amp; smiling!",
           "  a  dog\trunning\n on grass  ", "x"]


def reference_contexts(reference: torch.nn.Module, encoder, prompts: list[str]) -> list[torch.Tensor]:
    """The official encoder run on our tokenizer's ids and mask, trimmed like the official T5EncoderModel."""
    ids, mask = encoder.tokenizer(prompts)
    with torch.no_grad():
        hidden = reference(ids, mask)
    return [states[:length] for states, length in zip(hidden, mask.sum(dim=1))]


def test_official_pth_matches_official_encoder(official_folder):
    folder, reference = official_folder
    encoder = load_text_encoder(folder / TEXT_ENCODER_FILE, dtype=torch.float32)
    contexts = encoder.encode(PROMPTS)
    expected = reference_contexts(reference, encoder, PROMPTS)
    errors = [relative_error(c, e) for c, e in zip(contexts, expected)]
    print(f"T5 fp32 parity, max abs error / max |ref| per prompt: {errors}")
    assert [c.shape for c in contexts] == [e.shape for e in expected]
    assert all(context.shape[1] == TINY["dim"] for context in contexts)
    assert max(errors) <= 1e-5


def test_full_length_rows_match_including_padding(official_folder):
    """All 512 rows (padded queries too) against the official forward: exercises every position bucket."""
    folder, reference = official_folder
    encoder = load_text_encoder(folder / TEXT_ENCODER_FILE, dtype=torch.float32)
    ids, mask = encoder.tokenizer(PROMPTS)
    with torch.no_grad():
        error = relative_error(encoder.model(ids, mask), reference(ids, mask))
    print(f"T5 fp32 parity over all 512 rows: {error:.2e}")
    assert error <= 1e-5


def test_bf16_file_runs_in_bf16_close_to_official_bf16(official_folder, tmp_path):
    folder, reference = official_folder
    path = tmp_path / TEXT_ENCODER_FILE
    torch.save({k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()}, path)
    encoder = load_text_encoder(path, tokenizer=folder / TOKENIZER_DIR)
    assert encoder.model.blocks[0].attn.q.weight.dtype == torch.bfloat16
    contexts = encoder.encode(PROMPTS)
    reference_bf16 = official_encoder(tokenizer_vocab(folder / TOKENIZER_DIR)).to(torch.bfloat16)
    errors = [relative_l2(c, e) for c, e in zip(contexts, reference_contexts(reference_bf16, encoder, PROMPTS))]
    print(f"T5 bf16 vs official bf16, relative L2 per prompt: {errors}")
    assert all(context.dtype == torch.bfloat16 for context in contexts)
    assert max(errors) <= 2e-2


def test_padded_and_unpadded_real_tokens_agree(official_folder):
    folder, _ = official_folder
    encoder = load_text_encoder(folder / TEXT_ENCODER_FILE, dtype=torch.float32)
    ids, mask = encoder.tokenizer(PROMPTS[:1])
    length = int(mask.sum())
    with torch.no_grad():
        padded = encoder.model(ids, mask)[0, :length]
        unpadded = encoder.model(ids[:, :length], mask[:, :length])[0]
    difference = relative_error(unpadded, padded)
    print(f"T5 padded vs unpadded real tokens, max abs error / max |output|: {difference:.2e}")
    assert difference <= 2e-6


def test_hf_comfyui_layout_loads_to_the_same_outputs(official_folder, tmp_path):
    folder, reference = official_folder
    state = {official_to_hf(k): v.contiguous() for k, v in reference.state_dict().items()}
    state["encoder.embed_tokens.weight"] = state["shared.weight"].clone()
    state["spiece_model"] = torch.arange(16, dtype=torch.uint8)  # ComfyUI embeds its SentencePiece model
    path = tmp_path / "umt5_xxl_fp16.safetensors"
    save_file(state, str(path))
    from_hf = load_text_encoder(path, tokenizer=folder / TOKENIZER_DIR, dtype=torch.float32)
    official = load_text_encoder(folder / TEXT_ENCODER_FILE, dtype=torch.float32)
    for hf_context, official_context in zip(from_hf.encode(PROMPTS), official.encode(PROMPTS)):
        assert torch.equal(hf_context, official_context)


def test_scaled_fp8_file_runs_quantized(official_folder, tmp_path):
    """ComfyUI legacy scaled FP8 (``scaled_fp8`` marker, fp8 weights, scalar ``scale_weight``)."""
    folder, reference = official_folder
    state, dequantized = {}, {}
    for key, tensor in reference.state_dict().items():
        hf_key = official_to_hf(key)
        if tensor.dim() == 2 and key.startswith("blocks.") and "pos_embedding" not in key:
            scale = tensor.abs().max() / 448
            codes = (tensor / scale).to(torch.float8_e4m3fn)
            state[hf_key] = codes
            state[hf_key.replace(".weight", ".scale_weight")] = scale.reshape(())
            state[hf_key.replace(".weight", ".scale_input")] = torch.ones(())
            dequantized[key] = codes.float() * scale
        else:
            state[hf_key] = tensor.to(torch.float16)
            dequantized[key] = state[hf_key].float()
    state["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(state, str(path))
    encoder = load_text_encoder(path, tokenizer=folder / TOKENIZER_DIR, dtype=torch.float32)
    q = encoder.model.blocks[1].attn.q
    assert isinstance(q, QuantLinear) and q.scheme.granularity == "tensor"
    stored = state["encoder.block.1.layer.0.SelfAttention.q.weight"]
    assert torch.equal(q.weight.view(torch.uint8), stored.view(torch.uint8))
    reference_dq = official_encoder(tokenizer_vocab(folder / TOKENIZER_DIR))
    reference_dq.load_state_dict(dequantized)
    expected = reference_contexts(reference_dq, encoder, PROMPTS)
    errors = [relative_l2(c, e) for c, e in zip(encoder.encode(PROMPTS), expected)]
    print(f"T5 scaled-FP8 file (bf16 matmuls) vs official on the same dequantized weights, relative L2: {errors}")
    assert max(errors) <= 2e-2


def test_lightx2v_int8_pth_runs_quantized(official_folder, tmp_path):
    """Official names with per-channel INT8 codes + ``weight_scale [out, 1]`` (LightX2V-style quantized .pth)."""
    folder, reference = official_folder
    state, dequantized = {}, {}
    for key, tensor in reference.state_dict().items():
        layer = key.removesuffix(".weight")
        if tensor.dim() == 2 and key.startswith("blocks.") and "pos_embedding" not in key:
            state[key], state[f"{layer}.weight_scale"] = quantize_weight(tensor, QuantScheme("int8", "channel"))
            dequantized[key] = state[key].float() * state[f"{layer}.weight_scale"]
        else:
            state[key] = dequantized[key] = tensor
    path = tmp_path / "models_t5_umt5-xxl-enc-int8.pth"
    torch.save(state, path)
    encoder = load_text_encoder(path, tokenizer=folder / TOKENIZER_DIR, dtype=torch.float32)
    fc1 = encoder.model.blocks[0].ffn.fc1
    assert isinstance(fc1, QuantLinear) and fc1.scheme == QuantScheme("int8", "channel")
    reference_dq = official_encoder(tokenizer_vocab(folder / TOKENIZER_DIR))
    reference_dq.load_state_dict(dequantized)
    expected = reference_contexts(reference_dq, encoder, PROMPTS)
    errors = [relative_l2(c, e) for c, e in zip(encoder.encode(PROMPTS), expected)]
    print(f"T5 INT8 .pth (bf16 matmuls) vs official on the same dequantized weights, relative L2: {errors}")
    assert max(errors) <= 2e-2


def test_fp8_option_quantizes_block_linears_per_channel(official_folder):
    """Every block Linear becomes LightX2V-style per-channel FP8; the forward matches the official encoder run on
    the same dequantized weights (the quantization error itself is only reported)."""
    folder, reference = official_folder
    encoder = load_text_encoder(folder / TEXT_ENCODER_FILE, dtype=torch.float32, quantization="fp8")
    linears = {name: module for name, module in encoder.model.named_modules()
               if isinstance(module, torch.nn.Linear | QuantLinear)}
    assert len(linears) == 7 * TINY["num_layers"]
    assert all(isinstance(m, QuantLinear) and m.scheme.granularity == "channel" for m in linears.values())
    original = reference.state_dict()
    dequantized = dict(original)
    for name, linear in linears.items():
        codes, scale = quantize_weight(original[f"{name}.weight"], QuantScheme("fp8_e4m3", "channel"))
        assert torch.equal(linear.weight.view(torch.uint8), codes.view(torch.uint8))
        assert torch.equal(linear.weight_scale, scale) and scale.shape == (linear.out_features, 1)
        dequantized[f"{name}.weight"] = linear.dequantized_weight()
    reference_dq = official_encoder(tokenizer_vocab(folder / TOKENIZER_DIR))
    reference_dq.load_state_dict(dequantized)
    contexts = encoder.encode(PROMPTS)
    errors = [relative_l2(c, e) for c, e in zip(contexts, reference_contexts(reference_dq, encoder, PROMPTS))]
    quantization_errors = [relative_l2(c, e) for c, e in zip(contexts, reference_contexts(reference, encoder, PROMPTS))]
    print(f"T5 fp8 option vs official on the same dequantized weights (bf16 matmuls), relative L2: {errors}; "
          f"vs official fp32 weights (FP8 weight error included, tiny random model): {quantization_errors}")
    assert max(errors) <= 2e-2


def test_tokenizer_pads_truncates_and_round_trips(official_folder):
    from tokenizers import Tokenizer

    folder, _ = official_folder
    raw = Tokenizer.from_file(str(folder / TOKENIZER_DIR / "tokenizer.json"))
    encoder = load_text_encoder(folder / TEXT_ENCODER_FILE, dtype=torch.float32)
    prompt = "  the cat &amp;lt;3\u3000smiling  "
    ids, mask = encoder.tokenizer([prompt, "a " * 600])
    assert ids.shape == mask.shape == (2, 512)
    length = int(mask[0].sum())
    assert ids[0, length - 1] == raw.token_to_id("</s>") == 1
    assert torch.all(ids[0, length:] == raw.token_to_id("<pad>")) and torch.all(mask[0, length:] == 0)
    assert raw.decode(ids[0, :length].tolist()) == "the cat <3 smiling" == clean_prompt(prompt)
    assert int(mask[1].sum()) == 512 and ids[1, -1] == 1  # truncated, end token kept
    assert [c.shape[0] for c in encoder.encode([prompt, "a " * 600])] == [length, 512]


@pytest.mark.parametrize("text", [
    "  hello\u00a0world\u3000again\x1cend ", "a &amp;amp; b &lt;tag&gt;", "tabs\t\tand\nnewlines\r\n",
    "\u2028line\u2029para\u205fx\u200ay", "&quot;quoted&quot;  &#39;single&#39;",
    "\u201ccurly\u201d \ufb01sh, \u4e2d\u6587\uff0c", "mojibake: caf\u00c3\u00a9"])
def test_prompt_cleaning_matches_official(text):
    """Against the official basic_clean + whitespace_clean, both with the real ftfy."""
    import ftfy
    assert ftfy.fix_text("\u201cx\u201d") == '"x"'  # the real library, not a stand-in
    tokenizers = import_official("tokenizers")
    assert clean_prompt(text) == tokenizers.whitespace_clean(tokenizers.basic_clean(text))


def test_cleaning_unescapes_html_twice():
    assert clean_prompt("&amp;amp;") == html.unescape("&amp;") == "&"


def test_missing_tokenizer_names_expected_folder(official_folder, tmp_path):
    folder, _ = official_folder
    lonely = tmp_path / TEXT_ENCODER_FILE
    lonely.write_bytes((folder / TEXT_ENCODER_FILE).read_bytes())
    with pytest.raises(MissingComponentError, match="google/umt5-xxl/tokenizer.json"):
        load_text_encoder(lonely)


def test_pth_is_read_weights_only(official_folder, tmp_path):
    """A pickle that would run code is refused before anything executes."""
    folder, _ = official_folder
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / TEXT_ENCODER_FILE
    torch.save({"token_embedding.weight": torch.zeros(2, 2), "evil": Exploit()}, path)
    with pytest.raises(ModelFormatError):
        load_text_encoder(path, tokenizer=folder / TOKENIZER_DIR)
    assert not marker.exists()


def test_wrong_tensors_are_a_format_error(official_folder, tmp_path):
    folder, reference = official_folder
    state = dict(reference.state_dict())
    del state["blocks.1.ffn.fc2.weight"]
    path = tmp_path / TEXT_ENCODER_FILE
    torch.save(state, path)
    with pytest.raises(ModelFormatError, match="blocks.1.ffn.fc2.weight is missing"):
        load_text_encoder(path, tokenizer=folder / TOKENIZER_DIR)


def test_config_is_inferred_from_shapes(official_folder):
    folder, reference = official_folder
    model = UMT5Encoder.from_state_dict(reference.state_dict(), dtype=torch.float32)
    config = model.config
    assert (config.dim, config.attn_dim, config.ffn_dim, config.num_heads, config.num_layers, config.num_buckets) == (
        TINY["dim"], TINY["dim_attn"], TINY["dim_ffn"], TINY["num_heads"], TINY["num_layers"], TINY["num_buckets"])
