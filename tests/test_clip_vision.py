"""CLIP vision tower: parity with the official XLM-R CLIP (``CLIPModel.visual``: preprocessing + penultimate
block), the official ``.pth`` (visual.* only) and the Hugging Face / ComfyUI ``clip_vision_h`` layout."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan_express.errors import InvalidInputError, ModelFormatError
from wan_express.loaders.clip_vision import load_clip_vision
from wan_express.loaders.components import CLIP_VISION_FILE
from wan_express.synthetic import random_weights_

from .test_t5 import import_official, relative_error, relative_l2

# the official wrapper asks for CUDA autocast through a deprecated alias; on a CPU it is a no-op
pytestmark = pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning")

# 28 / 7 = 4x4 patches + class token = 17 tokens; width 160 = 2 heads of 80 (the ViT-H head width).
TINY = dict(embed_dim=32, image_size=28, patch_size=7, vision_dim=160, vision_mlp_ratio=4, vision_heads=2,
            vision_layers=3, vision_pool="token", activation="gelu", vocab_size=40, max_text_len=12, type_size=1,
            pad_id=1, text_dim=32, text_heads=2, text_layers=1)
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def official_clip_model(seed: int = 0):
    """The official ``CLIPModel`` wrapper around a tiny random ``XLMRobertaCLIP`` (text tower included), fp32.

    Its constructor loads a checkpoint and a tokenizer, so the instance is assembled field by field; the
    normalisation step is torchvision's ``Normalize`` semantics, ``(x - mean) / std``, written out here.
    """
    clip = import_official("animate.clip")
    network = clip.XLMRobertaCLIP(**TINY).eval()
    random_weights_(network, seed)
    wrapper = object.__new__(clip.CLIPModel)
    wrapper.dtype, wrapper.device, wrapper.model = torch.float32, "cpu", network
    wrapper.transforms = types.SimpleNamespace(transforms=[lambda pixels: (pixels - MEAN) / STD])
    return wrapper


def official_to_hf(key: str) -> list[str]:
    """Official visual key -> Hugging Face CLIPVisionModel name(s) (formats.md §8.2), rule by rule; q/k/v are
    three names for one official tensor."""
    key = key.removeprefix("visual.")
    exact = {"cls_embedding": "embeddings.class_embedding", "pos_embedding": "embeddings.position_embedding.weight",
             "patch_embedding.weight": "embeddings.patch_embedding.weight", "head": "visual_projection.weight"}
    if key in exact:
        return [exact[key]]
    for old, new in (("pre_norm.", "pre_layrnorm."), ("post_norm.", "post_layernorm.")):
        if key.startswith(old):
            return [new + key[len(old):]]
    _, index, rest = key.split(".", 2)
    layer = f"encoder.layers.{index}"
    if rest.startswith("attn.to_qkv."):
        param = rest.rsplit(".", 1)[1]
        return [f"{layer}.self_attn.{part}_proj.{param}" for part in "qkv"]
    table = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
             "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}
    module, param = rest.rsplit(".", 1)
    return [f"{layer}.{table[module]}.{param}"]


def hf_state(official: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A ComfyUI/HF CLIPVisionModelWithProjection state dict made from official visual tensors."""
    state = {}
    for key, tensor in official.items():
        if not key.startswith("visual."):
            continue
        names = official_to_hf(key)
        if len(names) == 3:
            parts = tensor.chunk(3, dim=0)
        elif key == "visual.cls_embedding":
            parts = [tensor.reshape(-1)]
        elif key == "visual.pos_embedding":
            parts = [tensor[0]]
        elif key == "visual.head":
            parts = [tensor.t()]
        else:
            parts = [tensor]
        for name, part in zip(names, parts):
            target = name if name.startswith("visual_projection") else prefix + name
            state[target] = part.contiguous()
    tokens = official["visual.pos_embedding"].shape[1]
    state[prefix + "embeddings.position_ids"] = torch.arange(tokens)[None]
    return state


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("wan_clip")
    reference = official_clip_model()
    path = folder / CLIP_VISION_FILE
    torch.save(reference.model.state_dict(), path)
    return path, reference


def images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Non-square [-1, 1] images: the official resize squashes them to the model size without cropping."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 40, 57, generator=generator) * 2 - 1


def official_features(reference, pixels: torch.Tensor) -> torch.Tensor:
    """``CLIPModel.visual`` takes a list of videos [3, F, H, W]: one single-frame video per image."""
    with torch.no_grad():
        return reference.visual([image[:, None] for image in pixels.clone()])


def test_official_pth_matches_official_visual(official_checkpoint):
    path, reference = official_checkpoint
    encoder = load_clip_vision(path, dtype=torch.float32)
    pixels = images()
    features = encoder.encode(pixels)
    expected = official_features(reference, pixels)
    error = relative_error(features, expected)
    print(f"CLIP fp32 parity (preprocessing + {TINY['vision_layers'] - 1} of {TINY['vision_layers']} blocks), "
          f"max abs error / max |ref|: {error:.2e}")
    assert features.shape == expected.shape == (2, 17, TINY["vision_dim"])
    assert not torch.allclose(features[0], features[1])  # the images really are seen
    assert error <= 1e-5


def test_only_the_first_blocks_are_built(official_checkpoint):
    path, _ = official_checkpoint
    encoder = load_clip_vision(path, dtype=torch.float32)
    assert encoder.config.num_layers == TINY["vision_layers"]
    assert len(encoder.transformer) == TINY["vision_layers"] - 1
    assert encoder.config.num_heads == TINY["vision_heads"] and encoder.config.image_size == TINY["image_size"]


@pytest.mark.parametrize("prefix", ["vision_model.", ""], ids=["transformers4", "transformers5"])
def test_hf_comfyui_layout_gives_the_same_features(official_checkpoint, tmp_path, prefix):
    path, reference = official_checkpoint
    hf_path = tmp_path / "clip_vision_h.safetensors"
    save_file(hf_state(reference.model.state_dict(), prefix), str(hf_path))
    pixels = images()
    from_hf = load_clip_vision(hf_path, dtype=torch.float32).encode(pixels)
    assert torch.equal(from_hf, load_clip_vision(path, dtype=torch.float32).encode(pixels))


def test_fp16_default_runs_close_to_fp32(official_checkpoint):
    path, reference = official_checkpoint
    encoder = load_clip_vision(path)
    assert encoder.dtype == torch.float16 and encoder.pre_norm.weight.dtype == torch.float32
    pixels = images()
    features = encoder.encode(pixels)
    error = relative_l2(features, official_features(reference, pixels))
    print(f"CLIP fp16 vs official fp32, relative L2: {error:.2e}")
    assert features.dtype == torch.float16 and error <= 1e-2


def test_incomplete_qkv_is_a_format_error(official_checkpoint, tmp_path):
    _, reference = official_checkpoint
    state = hf_state(reference.model.state_dict(), "vision_model.")
    del state["vision_model.encoder.layers.1.self_attn.k_proj.weight"]
    hf_path = tmp_path / "clip_vision_h.safetensors"
    save_file(state, str(hf_path))
    with pytest.raises(ModelFormatError, match="layers|transformer.1"):
        load_clip_vision(hf_path, dtype=torch.float32)


def test_images_must_be_n3hw(official_checkpoint):
    path, _ = official_checkpoint
    encoder = load_clip_vision(path, dtype=torch.float32)
    with pytest.raises(InvalidInputError, match=r"\[N, 3, H, W\]"):
        encoder.encode(torch.zeros(3, 40, 40))


def test_pth_is_read_weights_only(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / CLIP_VISION_FILE
    torch.save({"visual.cls_embedding": torch.zeros(1, 1, 4), "x": Exploit()}, path)
    with pytest.raises(ModelFormatError):
        load_clip_vision(path)
    assert not marker.exists()
