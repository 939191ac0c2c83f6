"""The fused ops' compiled Triton kernels on a CUDA GPU against their eager references (skipped without CUDA and
Triton): q/k RMSNorm + RoPE + cast at d = 64 and 128 with tails, the gated residual on stream slices, a bf16 Wan
block at 14B width, and a compiled block.

Tolerances: errors are measured against the magnitude of each output's (even, odd) pair, which the rotation keeps:
one element of a rotated pair can cancel to almost 0 while the pair is O(1), and a per-element relative error then
charges fp32 summation-order noise to a near-zero value (seen on an H200: 1.7e-4 "relative" fp32 errors on such
elements). bf16 outputs within two bf16 steps of their pair (the kernel orders fp32 sums differently, so the
normalized input rounded to bf16 before the weight, as the official code does, and the output can each land on the
other side of a rounding boundary); fp32 within fp32 summation-order error. The compiled block is held to the
relative L2 of its update, not to an element-wise bound: inductor fuses the casts around the bf16 GEMMs
differently from eager PyTorch.
"""

import importlib.util

import pytest
import torch

from wan_express.kernels import fused
from wan_express.kernels.ops import TorchOps
from wan_express.models import RELEASED_CONFIGS, WanConfig
from wan_express.models.wan_dit import TimeConditioning, WanBlock

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
                                reason="needs a CUDA GPU and Triton")
BF16_STEP = 2.0 ** -7


def relative_step_error(got, want):
    """Largest |got - want| of an element over the magnitude of its (even, odd) pair in ``want`` (min 1e-3)."""
    want = want.float()
    pairs = torch.linalg.vector_norm(want.unflatten(-1, (-1, 2)), dim=-1, keepdim=True)
    scale = pairs.expand(*pairs.shape[:-1], 2).flatten(-2).clamp(min=1e-3)
    return ((got.float() - want).abs() / scale).max().item()


@pytest.mark.parametrize("heads,head_dim,grid", [(40, 128, (3, 7, 11)), (3, 64, (1, 1, 5)), (12, 128, (2, 30, 52))])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_norm_rope_kernel_matches_reference(heads, head_dim, grid, dtype):
    generator = torch.Generator(device="cuda").manual_seed(0)
    tokens = grid[0] * grid[1] * grid[2]
    x = (3 * torch.randn(2, tokens, heads * head_dim, device="cuda", generator=generator)).to(dtype)
    weight = 1 + 0.1 * torch.randn(heads * head_dim, device="cuda", generator=generator)
    cos, sin = fused.rope_tables(grid, head_dim, torch.device("cuda"))
    tolerance = 2 * BF16_STEP if dtype == torch.bfloat16 else 1e-5
    got = fused.qk_norm_rope(x, weight, cos, sin, 1e-6, dtype)
    assert relative_step_error(got, fused.qk_norm_rope_reference(x, weight, cos, sin, 1e-6, dtype)) <= tolerance
    got = fused.qk_norm(x, weight, 1e-6, dtype)
    assert relative_step_error(got, fused.qk_norm_reference(x, weight, 1e-6, dtype)) <= tolerance


@pytest.mark.parametrize("gate_rows", [0, 1, 77])
def test_gated_residual_kernel_matches_reference_on_slices(gate_rows):
    generator = torch.Generator(device="cuda").manual_seed(1)
    stream = torch.randn(2, 77, 5120, device="cuda", generator=generator)
    update = torch.randn(2, 77, 5120, device="cuda", generator=generator).to(torch.bfloat16)
    gate = torch.randn(2, gate_rows, 5120, device="cuda", generator=generator) if gate_rows else None
    want = stream.clone()
    fused.gated_residual_reference_(want[:, 10:50], update[:, 10:50], gate if gate_rows != 77 else gate[:, 10:50])
    fused.gated_residual_(stream[:, 10:50], update[:, 10:50], gate if gate_rows != 77 else gate[:, 10:50])
    torch.testing.assert_close(stream, want, rtol=1e-6, atol=1e-6)


def make_block(config: WanConfig, ops: TorchOps) -> WanBlock:
    torch.manual_seed(0)
    with torch.device("cuda"):
        block = WanBlock(ops, config, "blocks.0")
        for name, param in block.named_parameters():
            torch.nn.init.normal_(param, std=param.shape[-1] ** -0.5 if param.dim() == 2 else 0.1)
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight"):
                param.data += 1
    for module in block.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)
    return block.requires_grad_(False)


class ReferenceOps(TorchOps):
    """The same ops on the eager references (what a CPU runs)."""

    def qk_norm_rope(self, x, weight, rope, eps, dtype):
        return fused.qk_norm_rope_reference(x, weight, *rope, eps, dtype)

    def qk_norm(self, x, weight, eps, dtype):
        return fused.qk_norm_reference(x, weight, eps, dtype)

    def gated_residual_(self, residual, update, gate):
        fused.gated_residual_reference_(residual, update, gate)


def block_inputs(config, grid):
    generator = torch.Generator(device="cuda").manual_seed(2)
    tokens = grid[0] * grid[1] * grid[2]
    x = torch.randn(1, tokens, config.dim, device="cuda", generator=generator)
    e0 = 0.1 * torch.randn(1, 6, config.dim, device="cuda", generator=generator)
    context = torch.randn(1, 512, config.dim, device="cuda", generator=generator).to(torch.bfloat16)
    return x, TimeConditioning(e=e0[:, 0], e0=e0, index=None), context, fused.rope_tables(
        grid, config.head_dim, torch.device("cuda"))


def test_bf16_block_at_14b_width_matches_the_reference_ops():
    config = RELEASED_CONFIGS["Wan2.1-T2V-14B"]
    grid = (2, 6, 10)
    x, time, context, rope = block_inputs(config, grid)
    with torch.no_grad():
        want = make_block(config, ReferenceOps())(x.clone(), time, context, rope, torch.bfloat16)
        got = make_block(config, TorchOps(ffn_chunk_tokens=50))(x.clone(), time, context, rope, torch.bfloat16)
    rel_l2 = (torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want - x)).item()
    assert rel_l2 <= 2e-2, rel_l2


def test_compiled_block_matches_eager_block():
    config = WanConfig("t2v", 16, 16, dim=512, ffn_dim=1024, num_heads=4, num_layers=1, text_dim=64)
    grid = (2, 4, 6)
    x, time, context, rope = block_inputs(config, grid)
    block = make_block(config, TorchOps())
    with torch.no_grad():
        want = block(x.clone(), time, context, rope, torch.bfloat16)
        torch._dynamo.reset()
        got = torch.compile(block, fullgraph=True)(x.clone(), time, context, rope, torch.bfloat16)
    rel_l2 = (torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want - x)).item()
    assert rel_l2 <= 1e-2, rel_l2
