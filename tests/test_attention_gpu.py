"""The 8-bit attention's compiled kernels on a CUDA GPU against fp32 attention and against their eager emulation,
at a DiT size (tokens of a small video, 40 heads cut to 4) and at awkward lengths.

Bounds as in `test_attention_reference` (from the rounding analysis there). Kernel vs emulation: both round P and
V the same way, so what is left is fp32 summation order (tensor cores vs PyTorch), which moves a P or V code by
one step now and then, and the bf16 output rounding: bound 1e-2.
"""

import pytest
import torch

from wan_express.kernels.attention import op, reference
from wan_express.kernels.attention.configs import config_for
from wan_express.kernels.capability import compute_capability, triton_available

from .test_attention_reference import BOUNDS, MIN_COSINE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not triton_available(),
                                reason="needs a CUDA GPU and Triton")
VS_EMULATION = 1e-2
# (head dim, query length, key length): a 33 × 20 × 12 latent of tokens, partial tiles, cross-attention lengths.
SHAPES = [(128, 7920, 7920), (64, 4133, 4133), (128, 3001, 512), (64, 257, 77)]


def modes():
    capability = compute_capability(torch.device("cuda"))
    return ["fp8", "bf16"] if capability >= (8, 9) else ["bf16"]


def inputs(head_dim, Lq, Lk, shared_mean=0.0, seed=0):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    mean = shared_mean * torch.randn(head_dim, generator=generator, device="cuda")
    q, k, v = (torch.randn(1, length, 4, head_dim, generator=generator, device="cuda") for length in (Lq, Lk, Lk))
    return [t.to(torch.bfloat16).transpose(1, 2) for t in (q + mean, k + mean, v)]


@pytest.mark.parametrize("shared_mean", [0.0, 4.0])
@pytest.mark.parametrize("head_dim, Lq, Lk", SHAPES)
def test_kernel_is_within_the_fp32_bounds_and_matches_its_emulation(head_dim, Lq, Lk, shared_mean):
    q, k, v = inputs(head_dim, Lq, Lk, shared_mean, seed=Lq)
    want = reference.attention_fp32(q, k, v)
    for pv in modes():
        got = op.run(q, k, v, pv)
        torch.cuda.synchronize()
        assert got.shape == (1, 4, Lq, head_dim) and torch.isfinite(got).all()
        error = reference.errors(got, want)
        assert error["rel_l2"] <= BOUNDS[pv] and error["cosine"] >= MIN_COSINE, (pv, error)
        config = config_for(head_dim, compute_capability(q.device))
        emulated = reference.emulate(q, k, v, pv, config.block_m, config.block_n)
        assert reference.errors(got, emulated)["rel_l2"] <= VS_EMULATION, pv


def test_custom_op_compiles_and_matches_eager():
    q, k, v = inputs(128, 1000, 1000)
    compiled = torch.compile(lambda q, k, v: torch.ops.wan_express.sage8_attention(q, k, v, modes()[0]) * 2,
                             fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), op.run(q, k, v, modes()[0]) * 2, rtol=0, atol=0)
