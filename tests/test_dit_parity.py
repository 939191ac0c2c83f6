"""The Wan DiT matches the official Wan modules (and diffusers for the Wan2.1 CLIP branch) on tiny random models.

Tolerance (spec networks.md §1.8): max |ours - reference| <= 1e-4 * max |reference| in fp32; the reference computes
the sinusoid and RoPE in float64, we rotate in float32.
"""

import pytest
import torch

from wan_express.models import WanConfig, WanDiT

from wan_express.synthetic import random_weights_

from .official_reference import diffusers_wan_model, official_wan_model

REL_TOL = 1e-4
TINY = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)
BATCH, FRAMES, HEIGHT, WIDTH = 2, 3, 6, 10
TOKENS = FRAMES * (HEIGHT // 2) * (WIDTH // 2)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def make_inputs(config: WanConfig, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, config.out_dim, FRAMES, HEIGHT, WIDTH, generator=generator)
    y = torch.randn(BATCH, config.y_dim, FRAMES, HEIGHT, WIDTH, generator=generator) if config.y_dim else None
    lengths = [7, 12]  # real text tokens per sample; ours gets them zero-padded, the reference unpadded
    context = torch.zeros(BATCH, max(lengths), config.text_dim)
    for i, length in enumerate(lengths):
        context[i, :length] = torch.randn(length, config.text_dim, generator=generator)
    return x, y, context, lengths


def run_official(config: WanConfig, t_tokens: torch.Tensor, seed: int = 0):
    """Our model and the official Wan2.2 WanModel on the same weights; returns (ours, reference)."""
    reference = official_wan_model(config, seed)
    ours = WanDiT.from_state_dict(reference.state_dict(), config=None)
    x, y, context, lengths = make_inputs(config, seed + 1)
    with torch.no_grad():
        expected = reference(list(x), t_tokens, [c[:n] for c, n in zip(context, lengths)], seq_len=TOKENS,
                             y=None if y is None else list(y))
        got = ours(x, t_tokens, context, y=y)
    return got, torch.stack(expected)


@pytest.mark.parametrize("model_type,in_dim,out_dim", [("t2v", 16, 16), ("i2v", 36, 16)])
def test_wan22_expert_matches_official_with_one_timestep_per_sample(model_type, in_dim, out_dim):
    config = WanConfig(model_type, in_dim, out_dim, **TINY)
    t = torch.tensor([700.0, 250.0])
    got, expected = run_official(config, t[:, None].expand(BATCH, TOKENS))
    assert got.shape == (BATCH, out_dim, FRAMES, HEIGHT, WIDTH) and got.dtype == torch.float32
    assert relative_error(got, expected) <= REL_TOL
    # the [B] form of t is the same model call
    reference = official_wan_model(config, 0)
    ours = WanDiT.from_state_dict(reference.state_dict())
    x, y, context, _ = make_inputs(config, 1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, context, y=y), got, rtol=0, atol=0)


def test_wan22_t2v_matches_official_with_per_token_timesteps():
    config = WanConfig("t2v", 16, 16, **TINY)
    t = torch.rand(BATCH, TOKENS, generator=torch.Generator().manual_seed(3)) * 1000
    got, expected = run_official(config, t)
    assert relative_error(got, expected) <= REL_TOL


def test_ti2v_matches_official_with_clean_first_frame():
    config = WanConfig("ti2v", 48, 48, **TINY)
    per_frame = TOKENS // FRAMES
    t = torch.full((BATCH, TOKENS), 875.0)
    t[:, :per_frame] = 0.0  # tokens of latent frame 0 hold the clean image
    got, expected = run_official(config, t, seed=5)
    assert relative_error(got, expected) <= REL_TOL


@pytest.mark.parametrize("model_type", ["i2v", "flf2v"])
def test_wan21_clip_branch_matches_diffusers(model_type):
    config = WanConfig(model_type, 36, 16, clip_branch=True, **TINY)
    random_model = WanDiT(config)
    random_weights_(random_model, seed=11)
    state_dict = random_model.state_dict()
    reference = diffusers_wan_model(state_dict, config)
    ours = WanDiT.from_state_dict(state_dict)
    assert ours.config == config
    x, y, context, _ = make_inputs(config, 12)
    clip = torch.randn(BATCH, config.image_tokens, config.clip_dim, generator=torch.Generator().manual_seed(13))
    t = torch.tensor([999.0, 125.0])
    padded = torch.nn.functional.pad(context, (0, 0, 0, config.text_len - context.shape[1]))
    with torch.no_grad():
        expected = reference(torch.cat([x, y], 1), t, padded,
                             encoder_hidden_states_image=clip.view(-1, config.clip_tokens, config.clip_dim),
                             return_dict=False)[0]
        got = ours(x, t, context, clip_fea=clip, y=y)
    assert relative_error(got, expected) <= REL_TOL


def test_bf16_keeps_fp32_islands_and_stays_close_to_fp32():
    config = WanConfig("i2v", 36, 16, clip_branch=True, **TINY)
    model = WanDiT(config)
    random_weights_(model, seed=21)
    fp32 = WanDiT.from_state_dict(model.state_dict())
    bf16 = WanDiT.from_state_dict(model.state_dict(), dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in bf16.named_parameters()}
    assert dtypes["blocks.0.self_attn.q.weight"] == torch.bfloat16
    assert dtypes["blocks.0.ffn.2.weight"] == torch.bfloat16
    for kept in ("blocks.0.modulation", "blocks.0.norm3.weight", "blocks.1.cross_attn.norm_k_img.weight",
                 "time_embedding.0.weight", "time_projection.1.weight", "head.head.weight", "head.modulation",
                 "img_emb.proj.0.weight", "img_emb.proj.4.bias"):
        assert dtypes[kept] == torch.float32, kept
    x, y, context, _ = make_inputs(config, 22)
    clip = torch.randn(BATCH, 257, 1280)
    t = torch.tensor([500.0, 900.0])
    with torch.no_grad():
        reference = fp32(x, t, context, clip_fea=clip, y=y)
        got = bf16(x, t, context, clip_fea=clip, y=y)
    assert got.dtype == torch.float32
    # spec networks.md §1.8: bf16 activations, relative L2 <= 2e-2 per forward
    assert (torch.linalg.vector_norm(got - reference) / torch.linalg.vector_norm(reference)).item() <= 2e-2
