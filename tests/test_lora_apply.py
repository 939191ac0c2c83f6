"""LoRAs on built models: merged or as side branches, on float and on FP8/INT8 weights; routing and reporting.

Tolerances (spec networks.md §1.8): float paths that differ only in fp32 rounding must agree to 1e-4 × max|output|;
quantized paths must stay within relative L2 5e-2 of the float path (the W8A8 budget).
"""

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from wan_express.errors import IncompatibleLoraError, ModelFormatError
from wan_express.kernels import quantized as quantized_module
from wan_express.kernels.quantize import quantize_layers, quantize_weight
from wan_express.kernels.quantized import QuantizedActivation, QuantLinear, QuantOps, QuantScheme
from wan_express.loaders.dit.lightx2v_config import read_lightx2v_config
from wan_express.loaders.dit.quant_targets import block_linear_layers
from wan_express.loaders.lora.attach import attach_loras, merge_loras
from wan_express.loaders.lora.format import parse_lora
from wan_express.loaders.lora.linear import LoraBranch, LoraLinear
from wan_express.loaders.lora.merge import AppliedLora, LoraPlan, MergedTensors
from wan_express.loaders.lora.spec import LoraSpec, load_loras, route_loras
from wan_express.models import WanConfig, WanDiT
from wan_express.synthetic import TINY_CONFIG, random_weights_

FLOAT_TOL = 1e-4      # max abs error / max |output|
QUANT_TOL = 5e-2      # relative L2
SCHEMES = {"fp8": QuantScheme("fp8_e4m3"), "int8": QuantScheme("int8")}
TINY_I2V = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)


def float_model(config=TINY_CONFIG, seed=0) -> WanDiT:
    model = WanDiT(config)
    random_weights_(model, seed)
    return model.requires_grad_(False).eval()


def quantized_model(float_state, scheme: QuantScheme, config=TINY_CONFIG) -> WanDiT:
    """A model of QuantLinear block linears; its float tensors are copies (merging writes them in place)."""
    layers = block_linear_layers(float_state, scheme)
    tensors = quantize_layers({key: tensor.clone() for key, tensor in float_state.items()}, layers)
    return WanDiT.from_state_dict(tensors, config=config, ops=QuantOps(layers, backend="dequant"))


def extractor_lora(model: WanDiT, seed: int, rank: int = 4, size: float = 0.1, prefix: str = "diffusion_model."):
    """A LoRA as LightX2V's extractor writes one: pairs for large 2-D weights, diff / diff_b / diff_m otherwise.

    (The extractor's threshold is 1e6 elements; on this tiny model 2-D weights of >= 30000 elements get pairs, so
    every attention and FFN linear and the text/time embeddings have one, while head.head gets a full diff.)
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, param in model.state_dict().items():
        module, _, kind = key.rpartition(".")
        noise = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
        if kind == "weight" and param.dim() == 2 and param.numel() >= 30000:
            out_features, in_features = param.shape
            tensors[f"{prefix}{module}.lora_up.weight"] = noise(out_features, rank) * size / rank ** 0.5
            tensors[f"{prefix}{module}.lora_down.weight"] = noise(rank, in_features) / in_features ** 0.5
        elif kind == "weight":
            tensors[f"{prefix}{module}.diff"] = noise(*param.shape) * size * param.float().std()
        elif kind == "bias":
            tensors[f"{prefix}{module}.diff_b"] = noise(*param.shape) * size * 0.1
        elif kind == "modulation":
            tensors[f"{prefix}{module}.diff_m"] = noise(*param.shape) * size * 0.1
    return tensors


def inputs(config: WanConfig, seed: int = 5):
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(1, config.out_dim, 2, 4, 6, generator=generator)
    context = torch.randn(1, 7, config.text_dim, generator=generator)
    y = torch.randn(1, config.y_dim, 2, 4, 6, generator=generator) if config.y_dim else None
    clip = torch.randn(1, config.image_tokens, config.clip_dim, generator=generator) if config.clip_branch else None
    return dict(x=latent, t=torch.tensor([600.0]), context=context, clip_fea=clip, y=y)


@torch.no_grad()
def run(model, config=TINY_CONFIG, device="cpu"):
    feed = {key: None if value is None else value.to(device) for key, value in inputs(config).items()}
    return model(**feed).cpu()


def max_error(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


def l2_error(got, want):
    return ((got - want).norm() / want.norm()).item()


def stack(model, seed=1, strength=0.8, **kwargs):
    return [AppliedLora(parse_lora(extractor_lora(model, seed, **kwargs), f"lora{seed}"), strength)]


def test_merged_and_side_branch_outputs_match_on_float_weights():
    base = float_model()
    loras = stack(base) + stack(base, seed=2, strength=-0.5)
    merged_model, branched_model = float_model(), float_model()
    merge_loras(merged_model, loras)
    attachment = attach_loras(branched_model, loras)
    assert sum(isinstance(m, LoraLinear) for m in branched_model.modules()) == 2 * 10 + 6  # block linears + text, time, projection, head
    reference, merged_out, branched_out = run(base), run(merged_model), run(branched_model)
    assert max_error(merged_out, reference) > 1e-2  # the LoRAs do something
    assert max_error(branched_out, merged_out) <= FLOAT_TOL
    # head.head's full diff runs as a branch too; its bias diff is written into the bias
    assert torch.equal(branched_model.head.head.base.weight, base.head.head.weight)
    assert not torch.equal(branched_model.head.head.base.bias, base.head.head.bias)
    attachment.detach()


def test_side_branch_strength_changes_without_reloading_and_detaches_cleanly():
    base = float_model()
    model = float_model()
    keys = list(model.state_dict())
    attachment = attach_loras(model, stack(base, strength=1.0))
    attachment.set_strength(0, 0.0)
    assert torch.equal(run(model), run(base))
    attachment.set_strength(0, 2.5)
    at_strength = float_model()
    merge_loras(at_strength, stack(base, strength=2.5))
    assert max_error(run(model), run(at_strength)) <= FLOAT_TOL
    attachment.detach()
    assert list(model.state_dict()) == keys and not any(isinstance(m, LoraLinear) for m in model.modules())
    assert torch.equal(run(model), run(base))


def test_one_attachment_per_model():
    model = float_model()
    attach_loras(model, stack(model))
    with pytest.raises(IncompatibleLoraError, match="already carries unmerged LoRAs"):
        attach_loras(model, stack(model, seed=3))
    with pytest.raises(IncompatibleLoraError, match="already carries unmerged LoRAs"):
        merge_loras(model, stack(model, seed=3))


@pytest.mark.parametrize("codes", sorted(SCHEMES))
def test_quantized_merge_requantizes_with_fresh_per_channel_scales(codes):
    scheme = SCHEMES[codes]
    base = float_model()
    model = quantized_model(base.state_dict(), scheme)
    before = {name: m.dequantized_weight().clone() for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    bias_before = model.blocks[0].ffn[0].bias.clone()
    loras = stack(base)
    plan = LoraPlan(loras, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    merge_loras(model, loras)
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            assert module.weight.dtype == scheme.dtype and module.weight_scale.shape == (module.out_features, 1)
            codes_want, scale_want = quantize_weight(before[name] + plan.delta(f"{name}.weight"), scheme)
            assert torch.equal(module.weight, codes_want) and torch.equal(module.weight_scale, scale_want), name
    delta_b = plan.delta("blocks.0.ffn.0.bias")
    assert torch.equal(model.blocks[0].ffn[0].bias, bias_before + delta_b)


@pytest.mark.parametrize("codes", sorted(SCHEMES))
def test_quantized_merge_and_side_branch_stay_within_quantization_error(codes):
    scheme = SCHEMES[codes]
    base = float_model()
    loras = stack(base)
    reference = float_model()
    merge_loras(reference, loras)
    want = run(reference)

    merged = quantized_model(base.state_dict(), scheme)
    merge_loras(merged, loras)
    branched = quantized_model(base.state_dict(), scheme)
    codes_before = branched.blocks[1].self_attn.q.weight.clone()
    attach_loras(branched, loras)
    assert isinstance(branched.blocks[1].self_attn.q.base, QuantLinear)
    assert torch.equal(branched.blocks[1].self_attn.q.base.weight, codes_before)
    merged_err, branched_err = l2_error(run(merged), want), l2_error(run(branched), want)
    assert merged_err <= QUANT_TOL and branched_err <= QUANT_TOL, (merged_err, branched_err)

    # The side branch adds exactly the float delta to the quantized base: same as a float model holding the
    # dequantized base weights with the LoRA merged in fp32.
    dequantized_base = float_model()
    quantized_base = quantized_model(base.state_dict(), scheme)
    with torch.no_grad():
        for name, module in quantized_base.named_modules():
            if isinstance(module, QuantLinear):
                dequantized_base.get_submodule(name).weight.copy_(module.dequantized_weight())
    merge_loras(dequantized_base, loras)
    assert max_error(run(branched), run(dequantized_base)) <= FLOAT_TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: native W8A8 GEMMs and fused activations")
@pytest.mark.parametrize("codes", sorted(SCHEMES))
def test_merge_and_side_branch_on_native_quantized_gemms(codes):
    scheme = SCHEMES[codes]
    base = float_model()
    loras = stack(base)
    reference = float_model()
    merge_loras(reference, loras)
    want = run(reference)
    layers = block_linear_layers(base.state_dict(), scheme)

    def build():
        tensors = quantize_layers({key: tensor.clone() for key, tensor in base.state_dict().items()}, layers)
        return WanDiT.from_state_dict(tensors, dtype=torch.bfloat16, device="cuda", ops=QuantOps(layers))

    merged, branched = build(), build()
    merge_loras(merged, loras)
    attach_loras(branched, loras)
    merged_err, branched_err = l2_error(run(merged, device="cuda"), want), l2_error(run(branched, device="cuda"), want)
    assert merged_err <= QUANT_TOL and branched_err <= QUANT_TOL, (merged_err, branched_err)


def test_side_branch_reads_a_quantized_activation_fed_by_a_fused_op():
    generator = torch.Generator().manual_seed(0)
    layer = QuantLinear(64, 32, SCHEMES["fp8"], backend="dequant")
    codes, scale = quantize_weight(torch.randn(32, 64, generator=generator) / 8, SCHEMES["fp8"])
    layer.load_state_dict({"weight": codes, "weight_scale": scale, "bias": torch.zeros(32)}, assign=True)
    wrapper = LoraLinear(layer)
    down, up = torch.randn(2, 64, generator=generator), torch.randn(32, 2, generator=generator)
    wrapper.branches.append(LoraBranch(down, up, scale=0.5, strength=2.0, index=0))
    activation = QuantizedActivation(*quantize_weight(torch.randn(3, 64, generator=generator), SCHEMES["fp8"]))
    plain = activation.dequantize()
    with torch.no_grad():
        got, want = wrapper(activation), layer(plain) + 1.0 * (plain @ down.T @ up.T)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def fused_quantized_model(float_state, scheme: QuantScheme) -> WanDiT:
    layers = block_linear_layers(float_state, scheme)
    tensors = quantize_layers({key: tensor.clone() for key, tensor in float_state.items()}, layers)
    # emulate_activations: the dequant path quantizes a float input per token as the native kernels do, so the
    # base output is the same whether its input arrives fused-quantized or float
    return WanDiT.from_state_dict(tensors, ops=QuantOps(layers, backend="dequant", emulate_activations=True))


@pytest.mark.parametrize("codes", sorted(SCHEMES))
def test_side_branches_read_the_float_input_where_a_fused_kernel_would_quantize_it(codes, monkeypatch):
    scheme = SCHEMES[codes]
    base = float_model()
    loras = stack(base)
    unfused = fused_quantized_model(base.state_dict(), scheme)
    attach_loras(unfused, loras)
    want = run(unfused)
    # QuantOps fuses the activation quantization into the LayerNorm / GELU feeding a quantized linear only on CUDA
    # with Triton; forcing that decision runs the fused path on CPU through the PyTorch reference kernels.
    monkeypatch.setattr(quantized_module, "fuses_quantization", lambda scheme, backend, device: True)
    model = fused_quantized_model(base.state_dict(), scheme)
    before = run(model)
    gelu = model.blocks[0].ffn[1]
    inputs_seen = []
    attachment = attach_loras(model, loras)
    for module in model.blocks.modules():
        if isinstance(module, LoraLinear):
            module.register_forward_pre_hook(lambda _, args: inputs_seen.append(type(args[0])))
    got = run(model)
    assert len(inputs_seen) == 2 * 10 and set(inputs_seen) == {torch.Tensor}
    assert max_error(got, want) <= FLOAT_TOL
    attachment.detach()
    assert model.blocks[0].ffn[1] is gelu and torch.equal(run(model), before)


def test_merge_at_load_equals_merge_after_load():
    base = float_model()
    loras = stack(base)
    state = base.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    built = WanDiT.from_state_dict(MergedTensors(state, LoraPlan(loras, shapes)))
    merged = float_model()
    merge_loras(merged, loras)
    for key, tensor in merged.state_dict().items():
        assert torch.equal(built.state_dict()[key], tensor), key

    scheme = SCHEMES["int8"]
    layers = block_linear_layers(state, scheme)
    quantized = quantize_layers(state, layers)
    plan = LoraPlan(loras, {k: tuple(v.shape) for k, v in quantized.items()})
    at_load = WanDiT.from_state_dict(MergedTensors(quantized, plan, layers), ops=QuantOps(layers, backend="dequant"))
    after_load = quantized_model(state, scheme)
    merge_loras(after_load, loras)
    for key, tensor in after_load.state_dict().items():
        assert torch.equal(at_load.state_dict()[key], tensor), key


def test_lora_files_load_once_and_merge_with_their_strength(tmp_path):
    base = float_model()
    path = tmp_path / "wan2.1_t2v_lora_rank4_lightx2v_4step.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in extractor_lora(base, 4).items()}, str(path))
    loras = load_loras([LoraSpec(path, 0.5), LoraSpec(path, 0.25)])
    assert loras[0].lora is loras[1].lora and [a.strength for a in loras] == [0.5, 0.25]
    from_file, from_memory = float_model(), float_model()
    merge_loras(from_file, loras)
    parsed = parse_lora({k: v.to(torch.bfloat16) for k, v in extractor_lora(base, 4).items()}, "mem")
    merge_loras(from_memory, [AppliedLora(parsed, 0.75)])
    assert max_error(run(from_file), run(from_memory)) <= FLOAT_TOL


def lora_config_specs(folder, entries) -> list[LoraSpec]:
    """The `LoraSpec`s of a LightX2V config whose ``lora_configs`` are ``entries``."""
    config = folder / "lightx2v_config.json"
    config.write_text(json.dumps({"lora_configs": entries}))
    return read_lightx2v_config(config).loras


def test_wan22_experts_get_their_own_lora_lists_with_one_routing_line_per_lora(caplog, tmp_path):
    specs = lora_config_specs(tmp_path, [
        {"path": "loras/distill_a.safetensors", "strength": 1.0, "name": "high_noise_model"},
        {"path": "loras/distill_b.safetensors", "name": "low_noise_model", "alpha": 8},
        {"path": "loras/wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors"},
        {"path": "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors", "strength": 0.8},
        {"path": "loras/wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors", "strength": 3.0},
        {"path": "loras/Wan2.2-T2V-A14B-4steps-lora_HIGH_fp16.safetensors"},
        {"path": "loras/wan22_lightning-LOW.safetensors"},
        {"path": "loras/highres_fix_lowrank_lora.safetensors"},
        {"path": "loras/Wan22-HighNoise-style.safetensors"},
        {"path": "loras/high_noise_and_low_noise_mix.safetensors"},
    ])
    assert specs[1].alpha == 8.0 and specs[1].expert == "low" and specs[0].strength == 1.0
    caplog.set_level(logging.INFO, logger="wan_express.loaders.lora.spec")
    routed = route_loras(specs)
    names = lambda chosen: [spec.path.name for spec in chosen]  # noqa: E731
    both = ["wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors", "highres_fix_lowrank_lora.safetensors",
            "high_noise_and_low_noise_mix.safetensors"]
    assert names(routed["high"]) == [
        "distill_a.safetensors", "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors", both[0],
        "Wan2.2-T2V-A14B-4steps-lora_HIGH_fp16.safetensors", both[1], "Wan22-HighNoise-style.safetensors", both[2]]
    assert names(routed["low"]) == [
        "distill_b.safetensors", "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors", both[0],
        "wan22_lightning-LOW.safetensors", both[1], both[2]]
    lines = [r.getMessage() for r in caplog.records if r.name == "wan_express.loaders.lora.spec"]
    assert len(lines) == len(specs)
    assert "LoRA distill_a.safetensors -> high-noise expert (chosen)" in lines
    assert "LoRA Wan2.2-T2V-A14B-4steps-lora_HIGH_fp16.safetensors -> high-noise expert (file name token 'HIGH')" \
        in lines
    assert ("LoRA wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors -> low-noise expert "
            "(file name token 'low_noise')") in lines
    assert "LoRA highres_fix_lowrank_lora.safetensors -> both experts (no high/low token in the file name)" in lines
    assert "LoRA high_noise_and_low_noise_mix.safetensors -> both experts (the file name names both experts)" in lines
    with pytest.raises(ModelFormatError, match=r"lora_configs\[0\]\.name must be one of high_noise_model"):
        lora_config_specs(tmp_path, [{"path": "x.safetensors", "name": "transformer"}])


def lora_records(caplog):
    return [r for r in caplog.records if r.name == "wan_express.loaders.lora.merge"]


def test_wan21_i2v_lora_on_an_a14b_expert_skips_the_image_branch_in_one_info_line(caplog):
    wan21_i2v = float_model(WanConfig("i2v", 36, 16, clip_branch=True, **TINY_I2V))
    a14b_config = WanConfig("i2v", 36, 16, clip_branch=False, **TINY_I2V)
    expert, untouched = float_model(a14b_config), float_model(a14b_config)
    tensors = extractor_lora(wan21_i2v, seed=6)
    assert any(".k_img." in k for k in tensors) and any("img_emb" in k for k in tensors)
    caplog.set_level(logging.INFO)
    merge_loras(expert, [AppliedLora(parse_lora(tensors, "wan21_i2v_lora"), 3.0)])
    records = lora_records(caplog)
    image_lines = [r for r in records if "image-branch" in r.getMessage()]
    assert len(image_lines) == 1 and image_lines[0].levelno == logging.INFO
    assert not [r for r in records if r.levelno >= logging.WARNING]
    assert "18 image-branch entries" in image_lines[0].getMessage()  # 2 blocks x 7 + img_emb 4 modules' entries
    assert l2_error(run(expert, a14b_config), run(untouched, a14b_config)) > 1e-2

    caplog.clear()
    merge_loras(wan21_i2v, [AppliedLora(parse_lora(tensors, "wan21_i2v_lora"), 1.0)])
    assert not [r for r in lora_records(caplog) if "image-branch" in r.getMessage()]


def test_keys_matching_nothing_are_summarised_in_one_warning(caplog):
    model = float_model()
    deep = float_model(WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=4, text_dim=64))
    tensors = extractor_lora(deep, seed=7)  # blocks 2 and 3 do not exist in the 2-block model
    tensors["diffusion_model.vace_blocks.0.before_proj.lora_up.weight"] = torch.zeros(256, 4)
    caplog.set_level(logging.INFO)
    merge_loras(model, [AppliedLora(parse_lora(tensors, "deep_lora"), 1.0)])
    warnings = [r for r in lora_records(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    per_block = sum(1 for k in tensors if k.startswith("diffusion_model.blocks.3.") and not k.endswith("lora_down.weight"))
    assert f"{2 * per_block + 1} keys match nothing" in message and "in all" in message


def test_a_lora_that_matches_nothing_is_an_error_naming_one_key():
    model = float_model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    flux = {f"lora_unet_double_blocks_{i}_img_attn_qkv.{part}": torch.zeros(4, 4)
            for i in range(2) for part in ("lora_up.weight", "lora_down.weight")}
    flux["lora_unet_double_blocks_0_img_attn_qkv.alpha"] = torch.tensor(4.0)
    for apply in (merge_loras, attach_loras):
        with pytest.raises(IncompatibleLoraError, match=r"LoRA flux_lora matches nothing in WanDiT: none of its 5 keys "
                                                        r"\(e\.g\. lora_unet_double_blocks_0_img_attn_qkv\.alpha\)"):
            apply(model, [AppliedLora(parse_lora(flux, "flux_lora"), 1.0)])
    deep = float_model(WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=4, text_dim=64))
    later_blocks = {k: v for k, v in extractor_lora(deep, seed=7).items() if k.startswith("diffusion_model.blocks.3.")}
    with pytest.raises(IncompatibleLoraError, match=r"matches nothing .* \(e\.g\. diffusion_model\.blocks\.3\."):
        merge_loras(model, [AppliedLora(parse_lora(later_blocks, "block3_lora"), 1.0)])
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, original[key]), key
    merge_loras(model, [AppliedLora(parse_lora({}, "empty_lora"), 1.0)])  # nothing to apply, nothing wrong


def test_a_lora_for_another_width_is_an_error_naming_one_key_and_the_shapes():
    model = float_model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    narrow = float_model(WanConfig("t2v", 16, 16, dim=128, ffn_dim=256, num_heads=1, num_layers=2, text_dim=64))
    loras = [AppliedLora(parse_lora(extractor_lora(narrow, seed=8, size=0.1), "wan_1.3b_lora"), 1.0)]
    for apply in (merge_loras, attach_loras):
        with pytest.raises(IncompatibleLoraError,
                           match=r"LoRA wan_1\.3b_lora does not fit .*'diffusion_model\.[\w.]+' gives [\w.]+ the "
                                 r"shape \(128(, \d+)+\) but the model's tensor is \(256(, \d+)+\)"):
            apply(model, loras)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, original[key]), key


def test_a_t2v_patch_embedding_diff_on_an_i2v_model_is_skipped_not_refused(caplog):
    t2v = float_model()
    i2v = float_model(WanConfig("i2v", 36, 16, clip_branch=False, **TINY_I2V))
    caplog.set_level(logging.INFO)
    merge_loras(i2v, [AppliedLora(parse_lora(extractor_lora(t2v, seed=9), "t2v_lora"), 1.0)])
    warnings = [r.getMessage() for r in lora_records(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "diffusion_model.patch_embedding.diff (input channels 64, the model has 144)" in warnings[0]
