"""The component nodes in a real ComfyUI (CPU): tooltips on every input, the tokenizer folders they list, a ComfyUI
umT5 file encoding with its embedded tokenizer, the VAE loading in fp32 on a CPU by default and a tiled decode.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (see tests/comfyui_server.py). The graph is built from
/object_info with every widget at its default, except the model choices, the size and the decode's tiling.
"""

import io
import json

import pytest
import sentencepiece as spm
import torch

from wan_express.models.t5 import T5Config, UMT5Encoder
from wan_express.nodes.component_nodes import TOKENIZER_DEFAULT
from wan_express.synthetic import (TINY_CONFIG, random_weights_, write_comfy_text_encoder, write_model_folder,
                                   write_tokenizer)

from .comfyui_server import requires_comfyui, running_comfyui

pytestmark = requires_comfyui

COMPONENT_NODES = ("WanExpressTextEncoderLoader", "WanExpressTextEncode", "WanExpressCLIPVisionLoader",
                   "WanExpressCLIPVisionEncode", "WanExpressVAELoader", "WanExpressVAEDecode", "WanExpressVAEEncode")
UMT5_FILE = "umt5_xxl_fp16.safetensors"


def write_comfy_umt5(path, dim: int):
    """A tiny ComfyUI-layout umT5 file with a SentencePiece model trained on a few sentences embedded."""
    writer = io.BytesIO()
    sentences = ["a red fox running through snow", "the camera following it at dawn", "waves on a rocky shore"]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences * 4), model_writer=writer, vocab_size=60,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    vocab = spm.SentencePieceProcessor(model_proto=writer.getvalue()).get_piece_size()
    encoder = UMT5Encoder(T5Config(vocab_size=vocab, dim=dim, attn_dim=dim, ffn_dim=2 * dim, num_heads=4,
                                   num_layers=2))
    random_weights_(encoder, seed=9)
    return write_comfy_text_encoder(path, encoder.state_dict(), writer.getvalue())


def node(object_info: dict, class_type: str, **inputs) -> dict:
    """An API-format node with every widget at its declared default (first choice of a list), then ``inputs``."""
    declared = {**object_info[class_type]["input"]["required"], **object_info[class_type]["input"].get("optional", {})}
    values = {}
    for name, spec in declared.items():
        options = spec[1] if len(spec) > 1 else {}
        if "default" in options:
            values[name] = options["default"]
        elif isinstance(spec[0], list) and spec[0]:
            values[name] = spec[0][0]
    return {"class_type": class_type, "inputs": {**values, **inputs}}


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_media")
    write_model_folder(base / "models" / "wan_express" / "Wan2.1-T2V-tiny")
    text_encoders = base / "models" / "text_encoders"
    write_comfy_umt5(text_encoders / UMT5_FILE, TINY_CONFIG.text_dim)
    write_tokenizer(text_encoders / "umt5-tokenizer")
    with running_comfyui(base) as server:
        yield server, base


def test_every_input_of_the_component_nodes_has_a_tooltip(comfyui):
    server, _ = comfyui
    object_info = server.get("/object_info")
    for class_type in COMPONENT_NODES:
        if class_type not in object_info:  # registered by nodes/__init__.py
            continue
        inputs = object_info[class_type]["input"]
        for name, spec in {**inputs["required"], **inputs.get("optional", {})}.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), (class_type, name)


def test_loaders_offer_the_tokenizer_folders_and_default_to_auto_precision(comfyui):
    server, _ = comfyui
    object_info = server.get("/object_info")
    choices, options = object_info["WanExpressTextEncoderLoader"]["input"]["optional"]["tokenizer_folder"]
    assert choices == [TOKENIZER_DEFAULT, "umt5-tokenizer/", "Wan2.1-T2V-tiny/"] and options["default"] == choices[0]
    dtypes, options = object_info["WanExpressVAELoader"]["input"]["required"]["dtype"]
    assert dtypes == ["auto", "bf16", "fp32"] and options["default"] == "auto"


def test_a_comfyui_umt5_file_with_its_own_tokenizer_drives_a_tiled_decode(comfyui):
    server, base = comfyui
    info = server.get("/object_info")
    folder = "Wan2.1-T2V-tiny/"
    prompt = {
        "1": node(info, "WanExpressDiTLoader", model=folder),
        "2": node(info, "WanExpressTextEncoderLoader", model=UMT5_FILE, device="cpu"),
        "3": node(info, "WanExpressTextEncode", text_encoder=["2", 0], text="a red fox running through snow"),
        "4": node(info, "WanExpressSampler", model=["1", 0], positive=["3", 0], width=160, height=64, length=5),
        "5": node(info, "WanExpressVAELoader", model=folder),
        "6": node(info, "WanExpressVAEDecode", vae=["5", 0], samples=["4", 0], tiled="on", tile=128),
        "7": node(info, "SaveImage", images=["6", 0], filename_prefix="wan_express/media"),
    }
    history = server.run_prompt(prompt)
    log = server.log()
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000] + log[-3000:]
    images = [image for output in history["outputs"].values() for image in output.get("images", [])]
    assert len(images) == 5
    assert f"umT5 encoder from {UMT5_FILE}" in log and "float32 on cpu, normalized latents" in log, log[-3000:]
