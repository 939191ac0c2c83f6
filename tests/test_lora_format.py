"""LoRA files of every key style parse to official module names, and merging follows the spec formula.

Formula (spec formats.md §9.4): ``W' = W + strength · scale · up @ down`` with ``scale = alpha / rank`` when the file
or the user gives an alpha, else 1; raw diffs add ``strength · diff``. Each test writes the keys in the exact style
of a published file and compares the merged tensor with the formula computed here in float64.
"""

import math

import pytest
import torch
from safetensors.torch import save_file

from wan_express.errors import IncompatibleLoraError, MissingComponentError, ModelFormatError
from wan_express.loaders.lora.format import parse_lora, read_lora
from wan_express.loaders.lora.merge import AppliedLora, LoraPlan, MergedTensors
from wan_express.models import WanDiT
from wan_express.synthetic import TINY_CONFIG, random_weights_

RANK = 4
MODULE = "blocks.1.self_attn.q"
# module path as each style writes it -> (up key, down key, alpha key)
KEY_STYLES = {
    "lightx2v": ("diffusion_model.{m}.lora_up.weight", "diffusion_model.{m}.lora_down.weight",
                 "diffusion_model.{m}.alpha"),
    "full_checkpoint": ("model.diffusion_model.{m}.lora_up.weight", "model.diffusion_model.{m}.lora_down.weight",
                        "model.diffusion_model.{m}.alpha"),
    "bare_lora_AB": ("{m}.lora_B.weight", "{m}.lora_A.weight", "{m}.alpha"),
    "peft_default": ("base_model.model.{m}.lora_B.default.weight", "base_model.model.{m}.lora_A.default.weight",
                     "base_model.model.{m}.alpha"),
    "lora_dot_up": ("{m}.lora.up.weight", "{m}.lora.down.weight", "{m}.alpha"),
    "underscore_lora": ("{m}_lora.up.weight", "{m}_lora.down.weight", "{m}.alpha"),
    "lora_linear_layer": ("{m}.lora_linear_layer.up.weight", "{m}.lora_linear_layer.down.weight", "{m}.alpha"),
    "bare_tensor_AB": ("{m}.lora_B", "{m}.lora_A", "{m}.alpha"),
    "diffusers": ("transformer.{d}.lora_B.weight", "transformer.{d}.lora_A.weight", "transformer.{d}.alpha"),
    "peft_diffusers": ("base_model.model.transformer.{d}.lora_B.weight", "base_model.model.transformer.{d}.lora_A.weight",
                       "base_model.model.transformer.{d}.alpha"),
    "kohya": ("lora_unet_{u}.lora_up.weight", "lora_unet_{u}.lora_down.weight", "lora_unet_{u}.alpha"),
    "wan_fun_kohya": ("lora_unet__{u}.lora_up.weight", "lora_unet__{u}.lora_down.weight", "lora_unet__{u}.alpha"),
    "kohya_diffusers": ("lora_unet_{du}.lora_up.weight", "lora_unet_{du}.lora_down.weight", "lora_unet_{du}.alpha"),
    "lycoris": ("lycoris_{u}.lora_up.weight", "lycoris_{u}.lora_down.weight", "lycoris_{u}.alpha"),
    "diffsynth": ("pipe.dit.{m}.lora_B.weight", "pipe.dit.{m}.lora_A.weight", "pipe.dit.{m}.alpha"),
}
# The same module under each naming: official, diffusers, and both with "." written as "_".
NAMES = {"m": MODULE, "d": "blocks.1.attn1.to_q", "u": MODULE.replace(".", "_"),
         "du": "blocks.1.attn1.to_q".replace(".", "_")}


@pytest.fixture(scope="module")
def base_tensors():
    model = WanDiT(TINY_CONFIG)
    random_weights_(model, seed=11)
    return {key: value.clone() for key, value in model.state_dict().items()}


def merged(base, tensors, strength=1.0, alpha=None, name="lora.safetensors"):
    lora = parse_lora(tensors, source=name)
    plan = LoraPlan([AppliedLora(lora, strength, alpha)], {k: tuple(v.shape) for k, v in base.items()})
    return lora, MergedTensors(base, plan)


def factors(out_features, in_features, seed, rank=RANK):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(out_features, rank, generator=generator) * 0.1,
            torch.randn(rank, in_features, generator=generator) * 0.1)


def expected_pair(weight, up, down, factor):
    return (weight.double() + factor * (up.double() @ down.double())).float()


@pytest.mark.parametrize("style", sorted(KEY_STYLES))
@pytest.mark.parametrize("with_alpha", [False, True])
def test_every_key_style_merges_by_the_formula(base_tensors, style, with_alpha):
    up_key, down_key, alpha_key = (k.format(**NAMES) for k in KEY_STYLES[style])
    up, down = factors(256, 256, seed=1)
    tensors = {up_key: up.to(torch.bfloat16), down_key: down.to(torch.bfloat16)}
    if with_alpha:
        tensors[alpha_key] = torch.tensor(2.0)
    lora, view = merged(base_tensors, tensors, strength=0.7)
    assert list(lora.modules) == [MODULE] and lora.unmapped == []
    scale = 2.0 / RANK if with_alpha else 1.0
    want = expected_pair(base_tensors[f"{MODULE}.weight"], up.to(torch.bfloat16).float(),
                         down.to(torch.bfloat16).float(), 0.7 * scale)
    got = view[f"{MODULE}.weight"]
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=0, atol=1e-6)
    untouched = "blocks.0.self_attn.q.weight"
    assert torch.equal(view[untouched], base_tensors[untouched])


def test_user_alpha_overrides_the_file_and_applies_without_one(base_tensors):
    up, down = factors(256, 256, seed=2)
    weight = base_tensors[f"{MODULE}.weight"]
    with_file_alpha = {f"{MODULE}.lora_up.weight": up, f"{MODULE}.lora_down.weight": down,
                       f"{MODULE}.alpha": torch.tensor(8.0)}
    without = {f"{MODULE}.lora_up.weight": up, f"{MODULE}.lora_down.weight": down}
    for tensors, alpha, strength, scale in ((with_file_alpha, None, 1.0, 8.0 / RANK),
                                            (with_file_alpha, 1.0, 1.0, 1.0 / RANK),
                                            (without, 2.0, -1.5, 2.0 / RANK),
                                            (without, None, 3.0, 1.0)):
        _, view = merged(base_tensors, tensors, strength=strength, alpha=alpha)
        want = expected_pair(weight, up, down, strength * scale)
        assert torch.allclose(view[f"{MODULE}.weight"], want, rtol=0, atol=1e-6), (alpha, strength)


def test_diffs_of_weights_biases_norms_and_modulation_add_times_strength(base_tensors):
    generator = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * 0.05

    tensors = {
        "diffusion_model.head.head.diff": rand(64, 256),
        "diffusion_model.head.head.diff_b": rand(64),
        "diffusion_model.blocks.0.norm3.diff": rand(256),
        "diffusion_model.blocks.0.norm3.diff_b": rand(256),
        "diffusion_model.blocks.0.self_attn.norm_q.diff": rand(256),
        "diffusion_model.blocks.0.ffn.0.diff_b": rand(512),
        "diffusion_model.blocks.1.diff_m": rand(1, 6, 256),
        "diffusion_model.head.diff_m": rand(1, 2, 256),
        "diffusion_model.patch_embedding.diff": rand(256, 16, 1, 2, 2),
        # kijai's WanVideoWrapper writes a modulation delta as <parent>.modulation.diff
        "diffusion_model.blocks.0.modulation.diff": rand(1, 6, 256),
    }
    targets = {
        "diffusion_model.head.head.diff": "head.head.weight",
        "diffusion_model.head.head.diff_b": "head.head.bias",
        "diffusion_model.blocks.0.norm3.diff": "blocks.0.norm3.weight",
        "diffusion_model.blocks.0.norm3.diff_b": "blocks.0.norm3.bias",
        "diffusion_model.blocks.0.self_attn.norm_q.diff": "blocks.0.self_attn.norm_q.weight",
        "diffusion_model.blocks.0.ffn.0.diff_b": "blocks.0.ffn.0.bias",
        "diffusion_model.blocks.1.diff_m": "blocks.1.modulation",
        "diffusion_model.head.diff_m": "head.modulation",
        "diffusion_model.patch_embedding.diff": "patch_embedding.weight",
        "diffusion_model.blocks.0.modulation.diff": "blocks.0.modulation",
    }
    lora, view = merged(base_tensors, tensors, strength=-2.0)
    assert lora.unmapped == []
    for key, target in targets.items():
        want = (base_tensors[target].double() - 2.0 * tensors[key].double()).float()
        assert torch.allclose(view[target], want, rtol=0, atol=1e-6), key


def test_lora_mid_and_conv_pairs_reshape_to_the_weight(base_tensors):
    generator = torch.Generator().manual_seed(4)
    up, down = factors(512, 256, seed=5)
    mid = torch.randn(RANK, RANK, generator=generator)
    conv_up = torch.randn(256, RANK, 1, 1, 1, generator=generator) * 0.1
    conv_down = torch.randn(RANK, 16, 1, 2, 2, generator=generator) * 0.1
    tensors = {
        "blocks.0.ffn.0.lora_up.weight": up, "blocks.0.ffn.0.lora_mid.weight": mid,
        "blocks.0.ffn.0.lora_down.weight": down, "blocks.0.ffn.0.alpha": torch.tensor(2.0),
        "patch_embedding.lora_up.weight": conv_up, "patch_embedding.lora_down.weight": conv_down,
    }
    _, view = merged(base_tensors, tensors)
    want_ffn = base_tensors["blocks.0.ffn.0.weight"].double() + 0.5 * (up.double() @ mid.double() @ down.double())
    assert torch.allclose(view["blocks.0.ffn.0.weight"], want_ffn.float(), rtol=0, atol=1e-6)
    conv_delta = (conv_up.flatten(1).double() @ conv_down.flatten(1).double()).reshape(256, 16, 1, 2, 2)
    want_conv = base_tensors["patch_embedding.weight"].double() + conv_delta
    assert torch.allclose(view["patch_embedding.weight"], want_conv.float(), rtol=0, atol=1e-6)


def test_several_loras_stack_in_order(base_tensors):
    (up1, down1), (up2, down2) = factors(256, 256, seed=6), factors(256, 256, seed=7, rank=8)
    first = parse_lora({f"{MODULE}.lora_up.weight": up1, f"{MODULE}.lora_down.weight": down1}, "a")
    second = parse_lora({f"diffusion_model.{MODULE}.lora_B.weight": up2,
                         f"diffusion_model.{MODULE}.lora_A.weight": down2,
                         f"diffusion_model.{MODULE}.alpha": torch.tensor(4.0)}, "b")
    shapes = {k: tuple(v.shape) for k, v in base_tensors.items()}
    view = MergedTensors(base_tensors, LoraPlan([AppliedLora(first, 1.5), AppliedLora(second, 0.5)], shapes))
    want = (base_tensors[f"{MODULE}.weight"].double() + 1.5 * up1.double() @ down1.double()
            + 0.5 * (4.0 / 8) * up2.double() @ down2.double())
    assert torch.allclose(view[f"{MODULE}.weight"], want.float(), rtol=0, atol=1e-6)


def test_keys_that_map_to_nothing_are_kept_for_the_summary():
    up, down = factors(256, 256, seed=8)
    lora = parse_lora({
        f"{MODULE}.lora_up.weight": up, f"{MODULE}.lora_down.weight": down,
        "blocks.0.self_attn.k.lora_up.weight": up,            # an up without its down
        "lora_unet_blocks_0_unknown_layer.lora_up.weight": up,
        "text_encoder.layers.0.q.lora_A.weight": down,
        "blocks.0.cross_attn.v.alpha": torch.tensor(1.0),     # an alpha alone
        "something_else": torch.zeros(1),
    }, source="mixed.safetensors")
    assert list(lora.modules) == [MODULE]
    assert lora.unmapped == sorted(["blocks.0.self_attn.k.lora_up.weight", "lora_unet_blocks_0_unknown_layer.lora_up.weight",
                                    "text_encoder.layers.0.q.lora_A.weight", "blocks.0.cross_attn.v.alpha",
                                    "something_else"])


def test_unsupported_adapters_and_corrupt_pairs_are_refused():
    up, down = factors(256, 256, seed=9)
    with pytest.raises(IncompatibleLoraError, match=r"'blocks\.0\.ffn\.0\.dora_scale'.*DoRA"):
        parse_lora({"blocks.0.ffn.0.lora_up.weight": up, "blocks.0.ffn.0.lora_down.weight": down,
                    "blocks.0.ffn.0.dora_scale": torch.ones(1, 256)}, source="dora.safetensors")
    with pytest.raises(ModelFormatError, match="rank 4 but .* has rank 3"):
        parse_lora({"blocks.0.ffn.0.lora_up.weight": up, "blocks.0.ffn.0.lora_down.weight": down[:3]}, "bad")
    with pytest.raises(ModelFormatError, match="both give the up of blocks.0.ffn.0"):
        parse_lora({"blocks.0.ffn.0.lora_up.weight": up, "diffusion_model.blocks.0.ffn.0.lora_B.weight": up,
                    "blocks.0.ffn.0.lora_down.weight": down}, "twice")


def test_read_lora_reads_a_lightx2v_file(tmp_path):
    up, down = factors(256, 256, seed=10)
    path = tmp_path / "wan2.1_t2v_lora_rank4_lightx2v_4step.safetensors"
    save_file({f"diffusion_model.{MODULE}.lora_up.weight": up.to(torch.bfloat16),
               f"diffusion_model.{MODULE}.lora_down.weight": down.to(torch.bfloat16),
               "diffusion_model.blocks.0.diff_m": torch.zeros(1, 6, 256)}, str(path))
    lora = read_lora(path)
    assert lora.name == path.name and sorted(lora.modules) == ["blocks.0", MODULE]
    module = lora.modules[MODULE]
    assert module.rank == RANK and module.alpha is None and math.isclose(module.scale(), 1.0)
    assert torch.equal(module.up, up.to(torch.bfloat16))
    with pytest.raises(MissingComponentError, match="missing.safetensors: LoRA file not found"):
        read_lora(tmp_path / "missing.safetensors")
