"""The Wan2.1 VACE DiT matches diffusers' ``WanVACETransformer3DModel`` on tiny random models, and its config comes
from config.json or the tensors.

Tolerance (spec networks.md §1.8): max |ours - reference| <= 1e-4 * max |reference| in fp32.
"""

import pytest
import torch

from wan_express.errors import InvalidInputError
from wan_express.models import RELEASED_CONFIGS, WanConfig, WanDiT, WanVaceDiT
from wan_express.synthetic import random_dit_weights

from .official_reference import official_to_diffusers

REL_TOL = 1e-4
TINY_VACE = WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=4, text_dim=64,
                      vace_layers=(0, 2), vace_in_dim=96)
BATCH, FRAMES, HEIGHT, WIDTH = 2, 3, 6, 10


def vace_to_diffusers(key: str) -> str:
    """Official VACE key -> diffusers key, rule by rule (the base rules of the parity tests for the blocks)."""
    if key.startswith("vace_blocks."):
        _, index, rest = key.split(".", 2)
        projections = {"before_proj": "proj_in", "after_proj": "proj_out"}
        module, _, param = rest.partition(".")
        if module in projections:
            return f"vace_blocks.{index}.{projections[module]}.{param}"
        return "vace_" + official_to_diffusers(f"blocks.{index}.{rest}")
    return official_to_diffusers(key)


def diffusers_vace_model(weights: dict, config: WanConfig) -> torch.nn.Module:
    from diffusers import WanVACETransformer3DModel

    model = WanVACETransformer3DModel(
        num_attention_heads=config.num_heads, attention_head_dim=config.head_dim, in_channels=config.in_dim,
        out_channels=config.out_dim, text_dim=config.text_dim, freq_dim=config.freq_dim, ffn_dim=config.ffn_dim,
        num_layers=config.num_layers, eps=config.eps, vace_layers=list(config.vace_layers),
        vace_in_channels=config.vace_in_dim)
    model.load_state_dict({vace_to_diffusers(k): v for k, v in weights.items()}, strict=True)
    return model.eval()


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def inputs(config: WanConfig, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, config.out_dim, FRAMES, HEIGHT, WIDTH, generator=generator)
    vace = torch.randn(BATCH, config.vace_in_dim, FRAMES, HEIGHT, WIDTH, generator=generator)
    context = torch.randn(BATCH, 9, config.text_dim, generator=generator)
    return x, vace, context


def diffusers_velocity(reference, x, t, context, vace, strength):
    padded = torch.nn.functional.pad(context, (0, 0, 0, 512 - context.shape[1]))  # the pipeline pads to 512
    scale = torch.full((len(reference.config.vace_layers),), strength)
    with torch.no_grad():
        return reference(x, t, padded, control_hidden_states=vace, control_hidden_states_scale=scale,
                         return_dict=False)[0]


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_vace_matches_diffusers(strength):
    weights = random_dit_weights(TINY_VACE, seed=3)
    ours = WanVaceDiT.from_state_dict(weights)
    assert ours.config == TINY_VACE
    reference = diffusers_vace_model(weights, TINY_VACE)
    x, vace, context = inputs(TINY_VACE)
    t = torch.tensor([800.0, 300.0])
    with torch.no_grad():
        got = ours(x, t, context, vace, strength)
    expected = diffusers_velocity(reference, x, t, context, vace, strength)
    assert relative_error(got, expected) <= REL_TOL
    # the hints matter: without the context the output differs (it is the plain T2V forward)
    with torch.no_grad():
        plain = ours(x, t, context)
    assert relative_error(plain, expected) > 1e-2


def test_vace_without_context_is_the_base_t2v_model():
    weights = random_dit_weights(TINY_VACE, seed=3)
    base = {k: v for k, v in weights.items() if not k.startswith("vace_")}
    x, _, context = inputs(TINY_VACE)
    t = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        vace_model = WanVaceDiT.from_state_dict(weights)(x, t, context)
        t2v = WanDiT.from_state_dict(base)(x, t, context)
    assert torch.equal(vace_model, t2v)


def test_vace_context_shape_is_checked():
    model = WanVaceDiT.from_state_dict(random_dit_weights(TINY_VACE, seed=3))
    x, vace, context = inputs(TINY_VACE)
    with pytest.raises(InvalidInputError, match="vace_context"):
        model(x, torch.tensor([500.0, 500.0]), context, vace[:, :, :2])


@pytest.mark.parametrize("name,count", [("Wan2.1-VACE-1.3B", 15), ("Wan2.1-VACE-14B", 8)])
def test_released_vace_configs_from_shapes_and_json(name, count):
    config = RELEASED_CONFIGS[name]
    with torch.device("meta"):
        shapes = {k: t.shape for k, t in WanVaceDiT(config).state_dict().items()}
    assert WanConfig.infer(shapes) == config and len(config.vace_layers) == count
    official_json = {**config.to_json(), "_class_name": "VaceWanModel", "model_type": "vace"}
    assert WanConfig.from_json(official_json) == config
    assert official_json["vace_layers"] == list(config.vace_layers)


def test_config_json_with_a_bad_vace_layer_list_is_refused():
    from wan_express.errors import ModelFormatError

    with pytest.raises(ModelFormatError, match="VACE layers"):
        WanConfig.from_json({**TINY_VACE.to_json(), "vace_layers": [1, 3]})
