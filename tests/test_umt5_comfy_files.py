"""ComfyUI's own umT5 files (``umt5_xxl_fp16.safetensors``, ``umt5_xxl_fp8_e4m3fn_scaled.safetensors``) load with
the tokenizer they carry: umT5's SentencePiece model as the uint8 tensor ``spiece_model``, beside weights under
Hugging Face T5 names. A tiny SentencePiece model is trained here and stored exactly that way.

The ids must equal SentencePiece's own (with ``</s>``, as ComfyUI's tokenizer adds it); contexts must equal the
same weights run from the official layout (exact: both fp32 from the same fp16 values).
"""

import io
import json

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import save_file

from wan_express.errors import MissingComponentError, ModelFormatError
from wan_express.kernels.quantized import QuantLinear
from wan_express.loaders.text_encoder import SentencePieceTokenizer, UMT5Tokenizer, clean_prompt, load_text_encoder
from wan_express.models.t5 import T5Config, TextEncoder, UMT5Encoder
from wan_express.synthetic import comfy_umt5_key, random_weights_, write_comfy_text_encoder, write_tokenizer

SENTENCES = ["the cat sat on the mat, looking at the camera and smiling", "a dog running on grass",
             "a red fox running through snow, the camera following it", "waves crash on a rocky shore at dawn"]
PROMPTS = ["the cat running on the shore", "  a red  dog &amp; a fox\tat dawn ", "zebra!"]


@pytest.fixture(scope="module")
def spiece_model() -> bytes:
    """A unigram SentencePiece model with umT5's special ids: pad 0, end 1, unknown 2, no start token."""
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES * 4), model_writer=writer, vocab_size=80,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    return writer.getvalue()


@pytest.fixture(scope="module")
def weights(spiece_model):
    """Tiny umT5 weights (official names), rounded to fp16 as ComfyUI's fp16 file stores them."""
    vocab = spm.SentencePieceProcessor(model_proto=spiece_model).get_piece_size()
    encoder = UMT5Encoder(T5Config(vocab_size=vocab, dim=32, attn_dim=32, ffn_dim=48, num_heads=4, num_layers=2))
    random_weights_(encoder, seed=7)
    return {key: tensor.to(torch.float16) for key, tensor in encoder.state_dict().items()}


def test_comfyui_key_names_are_core_t5_names(weights):
    keys = {comfy_umt5_key(key) for key in weights}
    assert {"shared.weight", "encoder.final_layer_norm.weight", "encoder.block.1.layer.0.SelfAttention.q.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "encoder.block.1.layer.1.DenseReluDense.wi_0.weight", "encoder.block.1.layer.1.DenseReluDense.wo.weight",
            "encoder.block.0.layer.1.layer_norm.weight"} <= keys
    assert all(key.startswith(("shared.", "encoder.")) for key in keys)


def test_fp16_file_tokenizes_with_its_embedded_model_like_sentencepiece(spiece_model, weights, tmp_path):
    path = write_comfy_text_encoder(tmp_path / "umt5_xxl_fp16.safetensors", weights, spiece_model)
    encoder = load_text_encoder(path, dtype=torch.float32)  # no tokenizer folder: the file's own
    assert isinstance(encoder.tokenizer, SentencePieceTokenizer)
    processor = spm.SentencePieceProcessor(model_proto=spiece_model, add_eos=True)  # as ComfyUI's SPieceTokenizer
    ids, mask = encoder.tokenizer(PROMPTS)
    assert ids.shape == mask.shape == (3, 512) and ids.dtype == mask.dtype == torch.long
    for row, text in enumerate(PROMPTS):
        expected = processor.encode(clean_prompt(text))
        length = int(mask[row].sum())
        assert ids[row, :length].tolist() == expected and expected[-1] == 1
        assert not ids[row, length:].any() and not mask[row, length:].any()
    assert processor.encode(PROMPTS[0]) == ids[0, :int(mask[0].sum())].tolist()  # cleaning is a no-op there


def test_fp16_file_encodes_like_the_same_weights_in_the_official_layout(spiece_model, weights, tmp_path):
    path = write_comfy_text_encoder(tmp_path / "umt5_xxl_fp16.safetensors", weights, spiece_model)
    encoder = load_text_encoder(path, dtype=torch.float32)
    official = TextEncoder(UMT5Encoder.from_state_dict(weights, dtype=torch.float32),
                           SentencePieceTokenizer(spiece_model))
    for ours, expected in zip(encoder.encode(PROMPTS), official.encode(PROMPTS)):
        assert torch.equal(ours, expected)


def test_long_prompts_are_truncated_keeping_the_end_token(spiece_model):
    tokenizer = SentencePieceTokenizer(spiece_model)
    ids, mask = tokenizer(["the cat " * 400])
    assert int(mask.sum()) == 512 and ids[0, -1] == 1


def test_scaled_fp8_file_runs_quantized_with_its_embedded_tokenizer(spiece_model, weights, tmp_path):
    """ComfyUI's umt5_xxl_fp8_e4m3fn_scaled layout: fp8 block Linears with scalar scale_weight, a scaled_fp8
    marker, the rest fp16, and spiece_model."""
    state = {}
    for key, tensor in weights.items():
        name = comfy_umt5_key(key)
        if tensor.dim() == 2 and key.startswith("blocks.") and "pos_embedding" not in key:
            scale = tensor.float().abs().max() / 448
            state[name] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            state[name.replace(".weight", ".scale_weight")] = scale.reshape(())
        else:
            state[name] = tensor
    state["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    state["spiece_model"] = torch.frombuffer(bytearray(spiece_model), dtype=torch.uint8)
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(state, str(path))
    encoder = load_text_encoder(path, dtype=torch.float32)
    assert isinstance(encoder.tokenizer, SentencePieceTokenizer)
    assert isinstance(encoder.model.blocks[0].attn.q, QuantLinear)
    contexts = encoder.encode(PROMPTS)
    assert [c.shape for c in contexts] == [(int(m.sum()), 32) for m in encoder.tokenizer(PROMPTS)[1]]
    assert all(torch.isfinite(c).all() for c in contexts)


def test_an_explicit_tokenizer_folder_wins_over_the_embedded_model(spiece_model, weights, tmp_path):
    folder = write_tokenizer(tmp_path)
    path = write_comfy_text_encoder(tmp_path / "umt5_xxl_fp16.safetensors", weights, spiece_model)
    encoder = load_text_encoder(path, tokenizer=folder, dtype=torch.float32)
    assert isinstance(encoder.tokenizer, UMT5Tokenizer)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    assert encoder.tokenizer(["a"])[0][0, 0] == [piece for piece, _ in vocab].index("\u2581a")


def test_a_file_without_a_tokenizer_says_what_to_give(weights, tmp_path):
    path = tmp_path / "umt5-xxl-enc.safetensors"
    save_file({comfy_umt5_key(k): v.contiguous() for k, v in weights.items()}, str(path))
    with pytest.raises(MissingComponentError, match="embeds none .*spiece_model.*google/umt5-xxl/tokenizer.json"):
        load_text_encoder(path)


def test_a_broken_embedded_model_is_a_format_error(weights, tmp_path):
    path = write_comfy_text_encoder(tmp_path / "umt5_xxl_fp16.safetensors", weights, b"not a model")
    with pytest.raises(ModelFormatError, match="spiece_model is not a SentencePiece model"):
        load_text_encoder(path)
