"""The 8-bit attention's arithmetic (its eager emulation) against fp32 attention, on CPU.

Bounds come from the rounding each step adds (measured values in comments, 1 × 2 heads × 1024 tokens):
- int8 Q·Kᵀ: a step of amax / 127 with amax ≈ 4.5σ per 128 × 128 tile is an rms error ≈ 0.01σ per element, so the
  scores move by ≈ 0.015 (natural-log units) and the output by about as much: bf16 P·V stays below 2e-2 (0.013).
- FP8 P·V: e4m3 keeps 3 mantissa bits; rounding P alone costs 0.025 relative L2 on i.i.d. Gaussian V and rounding
  V alone 0.026 (independent errors, scale-free: no per-block scaling of P or V changes them), so with the int8
  scores the floor is sqrt(0.025² + 0.026² + 0.014²) ≈ 0.039 (0.039): bound 0.044, i.e. cosine ≥ 0.999. Where V
  has per-channel offsets, V's smoothing takes them out of the rounding and the error falls below 2e-2.
- A large mean shared by Q and K (4σ per channel) is taken out by Q's and K's smoothing (bf16 0.009, FP8 0.030).
"""

import pytest
import torch

from wan_express.kernels.attention import reference

BOUNDS = {"bf16": 2e-2, "fp8": 0.044}
MIN_COSINE = 0.999


def attention_inputs(Lq=1024, Lk=1024, head_dim=128, shared_mean=0.0, v_offset=0.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mean = shared_mean * torch.randn(head_dim, generator=generator)
    q = torch.randn(1, 2, Lq, head_dim, generator=generator) + mean
    k = torch.randn(1, 2, Lk, head_dim, generator=generator) + mean
    v = torch.randn(1, 2, Lk, head_dim, generator=generator) + v_offset * torch.randn(head_dim, generator=generator)
    return [t.to(torch.bfloat16) for t in (q, k, v)]


@pytest.mark.parametrize("pv", reference.PV_MODES)
@pytest.mark.parametrize("shared_mean", [0.0, 4.0])
def test_emulation_is_within_its_bounds_of_fp32_attention(pv, shared_mean):
    q, k, v = attention_inputs(shared_mean=shared_mean)
    error = reference.errors(reference.emulate(q, k, v, pv), reference.attention_fp32(q, k, v))
    assert error["rel_l2"] <= BOUNDS[pv]
    assert error["cosine"] >= MIN_COSINE


def test_fp8_pv_meets_2e_2_where_v_has_channel_offsets():
    q, k, v = attention_inputs(v_offset=1.0)
    error = reference.errors(reference.emulate(q, k, v, "fp8"), reference.attention_fp32(q, k, v))
    assert error["rel_l2"] <= 2e-2


@pytest.mark.parametrize("head_dim, Lq, Lk", [(64, 200, 77), (128, 33, 300), (64, 1, 5)])
def test_partial_tiles_and_cross_attention_lengths(head_dim, Lq, Lk):
    q, k, v = attention_inputs(Lq, Lk, head_dim, seed=head_dim + Lq)
    for pv in reference.PV_MODES:
        out = reference.emulate(q, k, v, pv, block_m=64, block_n=32)
        assert out.shape == (1, 2, Lq, head_dim) and out.dtype == torch.bfloat16
        assert reference.errors(out, reference.attention_fp32(q, k, v))["rel_l2"] <= BOUNDS[pv]


def test_tile_sizes_only_change_the_rounding():
    q, k, v = attention_inputs(300, 300)
    small, large = (reference.emulate(q, k, v, "fp8", block_m=m, block_n=n) for m, n in ((64, 32), (256, 128)))
    assert reference.errors(small, large)["rel_l2"] <= 2 * BOUNDS["fp8"]
    assert not torch.equal(small, large)


def test_quantized_inputs_reconstruct_their_tensors():
    q, k, v = attention_inputs(130, 100)
    inputs = reference.quantize_inputs(q, k, v, block_m=64, block_n=32, pv="fp8")
    assert inputs.q_codes.dtype == torch.int8 and inputs.q_scale.shape == (1, 2, 3)
    assert inputs.k_scale.shape == (1, 2, 4) and inputs.key_bias.shape == (1, 2, 100)
    v_back = inputs.v_codes.float() * inputs.v_scale[:, :, None] + inputs.v_mean[:, :, None]
    assert reference.errors(v_back, v)["rel_l2"] <= 0.04  # e4m3's relative rounding, ≤ 2^-4 per element
    assert inputs.k_codes.float().mean(dim=2).abs().max() < 1.0  # K is centred before its codes


def test_unknown_pv_mode_is_refused():
    q, k, v = attention_inputs(8, 8)
    with pytest.raises(ValueError, match="pv must be one of"):
        reference.emulate(q, k, v, "fp4")
