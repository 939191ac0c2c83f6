"""The fused non-GEMM ops (`kernels.fused`): references against the eager math they replace and float64, their Triton
kernels under the CPU interpreter, their custom-op registration (fakes, 0 graph breaks in a compiled block), the
tiny DiT with them (chunked FFN bit-identical), and bench/fused_ops.py --tiny.

Tolerances (spec networks.md §1.8): fp32 RoPE relative ≤ 1e-5 vs fp64; bf16 outputs within one bf16 rounding of
the eager chain; a bf16 forward within relative L2 2e-2 of fp32.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wan_express.kernels import fused
from wan_express.kernels.ops import TorchOps
from wan_express.models import WanDiT
from wan_express.models.wan_dit import TimeConditioning, WanBlock
from wan_express.synthetic import TINY_CONFIG, random_dit_weights

BF16_STEP = 2.0 ** -7  # bf16 spacing relative to the value (8 significant bits): one rounding is within half of it
TESTS = Path(__file__).resolve().parent


def eager_chain(x, weight, cos, sin, eps, dtype):
    """What the DiT ran before the fusion: WanRMSNorm, fp32 apply_rope on [B, L, H, d], then the cast."""
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight
    heads = normed.unflatten(-1, (-1, 2 * cos.shape[1]))
    even, odd = heads.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([even * c - odd * s, even * s + odd * c], -1).flatten(-3).to(dtype)


def rope_float64(x, weight, grid, head_dim, eps):
    """RMSNorm + RoPE in float64 with angles from the formula of spec networks.md §1.4."""
    pairs = head_dim // 2
    axis_pairs = (pairs - 2 * (pairs // 3), pairs // 3, pairs // 3)
    f, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grid), indexing="ij")
    angles = torch.cat([pos.reshape(-1, 1) * 10000.0 ** (-2 * torch.arange(n, dtype=torch.float64) / (2 * n))
                        for pos, n in zip((f, h, w), axis_pairs)], dim=1)
    x64 = x.double()
    normed = (x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * weight.double()).unflatten(-1, (-1, pairs, 2))
    even, odd = normed.unbind(-1)
    c, s = torch.cos(angles)[None, :, None], torch.sin(angles)[None, :, None]
    return torch.stack([even * c - odd * s, even * s + odd * c], -1).flatten(-3)


def inputs(batch, grid, heads, head_dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = grid[0] * grid[1] * grid[2]
    x = (3 * torch.randn(batch, tokens, heads * head_dim, generator=generator)).to(dtype)
    return x, 1 + 0.1 * torch.randn(heads * head_dim, generator=generator)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_rope_reference_equals_the_eager_chain_and_float64(head_dim, dtype):
    grid = (3, 2, 5)
    x, weight = inputs(2, grid, 3, head_dim, dtype)
    cos, sin = fused.rope_tables(grid, head_dim, torch.device("cpu"))
    got = fused.qk_norm_rope(x, weight, cos, sin, 1e-6, dtype)
    assert got.shape == x.shape and got.dtype == dtype and got.is_contiguous()
    torch.testing.assert_close(got, eager_chain(x, weight, cos, sin, 1e-6, dtype), rtol=0, atol=0)
    want = rope_float64(x.float().to(dtype) if dtype == torch.float32 else x, weight, grid, head_dim, 1e-6)
    error = ((got.double() - want).abs() / want.abs().max()).max().item()
    # fp32: the allowed fp32 rotation; bf16: the official rounding of the normalized row plus the cast
    assert error <= (1e-5 if dtype == torch.float32 else 2 * BF16_STEP), error


def test_qk_norm_reference_is_wan_rms_norm_then_cast():
    x, weight = inputs(2, (1, 1, 9), 2, 64, torch.bfloat16)
    x32 = x.float()
    want = ((x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * weight).to(torch.bfloat16)
    torch.testing.assert_close(fused.qk_norm(x, weight, 1e-6, torch.bfloat16), want, rtol=0, atol=0)


@pytest.mark.parametrize("gate_shape", [None, (2, 1, 40), (2, 6, 40)])
def test_gated_residual_updates_the_stream_in_place_as_the_out_of_place_sum(gate_shape):
    generator = torch.Generator().manual_seed(1)
    stream = torch.randn(2, 6, 40, generator=generator)
    update = torch.randn(2, 6, 40, generator=generator).to(torch.bfloat16)
    gate = None if gate_shape is None else torch.randn(gate_shape, generator=generator)
    want = stream + (update if gate is None else update * gate)
    storage = stream.data_ptr()
    assert fused.gated_residual_(stream, update, gate) is None
    assert stream.data_ptr() == storage
    torch.testing.assert_close(stream, want, rtol=0, atol=0)


def test_custom_ops_pass_opcheck():
    x, weight = inputs(1, (1, 2, 3), 2, 64, torch.bfloat16)
    cos, sin = fused.rope_tables((1, 2, 3), 64, torch.device("cpu"))
    torch.library.opcheck(torch.ops.wan_express.qk_norm_rope.default, (x, weight, cos, sin, 1e-6, torch.bfloat16))
    torch.library.opcheck(torch.ops.wan_express.qk_norm.default, (x, weight, 1e-6, torch.float32))
    stream = torch.randn(1, 6, 128)
    torch.library.opcheck(torch.ops.wan_express.gated_residual_.default, (stream, x.float(), torch.randn(1, 1, 128)))


@pytest.fixture(scope="module")
def interpreted():
    if importlib.util.find_spec("triton") is None or torch.cuda.is_available():
        pytest.skip("interpreter checks run on CPU machines with Triton installed")
    done = subprocess.run([sys.executable, str(TESTS / "fused_interpreter_checks.py")],
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_triton_norm_rope_kernels_match_the_references_with_tails(interpreted):
    norms = {key: value for key, value in interpreted.items() if key.startswith(("rope", "norm"))}
    assert len(norms) == 12 and any("d=64" in key for key in norms) and any("d=128" in key for key in norms)
    for key, result in norms.items():
        assert result["finite"], key  # every element of the NaN-filled output was written
        # bf16: the same single rounding as the reference; fp32: summation order only
        assert result["max_bf16_ulps"] <= (1.0 if "bfloat16" in key else 1e-2), (key, result)


def test_triton_gated_residual_matches_and_leaves_other_tokens_alone(interpreted):
    residuals = {key: value for key, value in interpreted.items() if key.startswith("residual")}
    assert len(residuals) == 6
    for key, result in residuals.items():
        assert result["untouched_equal"] and result["max_abs_error"] <= 1e-6, (key, result)


def test_tiny_bf16_dit_with_the_kernels_matches_the_reference_forward(interpreted):
    result = interpreted["tiny dit bf16"]
    assert result["kernels_vs_reference_rel_l2"] <= 2e-3, result
    assert result["kernels_vs_fp32_rel_l2"] <= 2e-2, result


def tiny_forward(ops, dtype=torch.float32, t=None, seed=7):
    model = WanDiT.from_state_dict(random_dit_weights(TINY_CONFIG, seed=3), dtype=dtype, ops=ops)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 3, 6, 10, generator=generator)
    context = torch.randn(2, 9, TINY_CONFIG.text_dim, generator=generator)
    with torch.no_grad():
        return model(x, torch.tensor([700.0, 300.0]) if t is None else t, context)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_ffn_is_bit_identical_to_one_pass(dtype):
    one_pass = tiny_forward(TorchOps(), dtype)
    assert TorchOps(ffn_chunk_tokens=16).token_chunks(45) == [slice(0, 16), slice(16, 32), slice(32, 45)]
    assert torch.equal(tiny_forward(TorchOps(ffn_chunk_tokens=16), dtype), one_pass)


def test_chunked_ffn_with_per_token_timesteps_is_bit_identical():
    # chunks of 16 tokens: the CPU GEMM computes a row the same way at any row count that is a multiple of 16
    t = torch.rand(2, 45, generator=torch.Generator().manual_seed(2)) * 1000
    assert torch.equal(tiny_forward(TorchOps(ffn_chunk_tokens=16), t=t), tiny_forward(TorchOps(), t=t))


def test_blocks_get_a_contiguous_residual_stream_and_update_it_in_place():
    model = WanDiT.from_state_dict(random_dit_weights(TINY_CONFIG, seed=3))
    seen = []
    model.blocks[0].register_forward_hook(lambda block, args, out: seen.append((args[0].is_contiguous(),
                                                                               out.data_ptr() == args[0].data_ptr())))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model(torch.randn(1, 16, 2, 4, 6, generator=generator), torch.tensor([500.0]),
              torch.randn(1, 5, TINY_CONFIG.text_dim, generator=generator))
    assert seen == [(True, True)]


def block_inputs(block_dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    grid = (2, 2, 3)
    x = torch.randn(1, 12, TINY_CONFIG.dim, generator=generator)
    e0 = 0.1 * torch.randn(1, 6, TINY_CONFIG.dim, generator=generator)
    time = TimeConditioning(e=e0[:, 0], e0=e0, index=None)
    context = torch.randn(1, 512, TINY_CONFIG.dim, generator=generator)
    return x, time, context, fused.rope_tables(grid, TINY_CONFIG.head_dim, torch.device("cpu")), block_dtype


def test_a_compiled_block_has_no_graph_break():
    block = WanBlock(TorchOps(ffn_chunk_tokens=5), TINY_CONFIG, "blocks.0").requires_grad_(False)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(block)(*block_inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    ops = {str(node.target) for graph in explanation.graphs for node in graph.graph.nodes if node.op == "call_function"}
    assert {"wan_express.qk_norm_rope.default", "wan_express.qk_norm.default",
            "wan_express.gated_residual_.default"} <= ops, ops


def test_fused_ops_bench_runs_tiny(tmp_path):
    out = tmp_path / "fused_ops.json"
    done = subprocess.run([sys.executable, str(TESTS.parent / "bench" / "fused_ops.py"), "--tiny", "--json", str(out)],
                          cwd=tmp_path, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    names = {row["op"] for row in report["ops"]}
    assert {"qk_norm_rope (self q or k)", "qk_norm (cross q)", "gated_residual_"} <= names
    for row in report["ops"]:
        assert row["eager"]["ms"] > 0 and row["fused"]["ms"] > 0 and row["fused"]["bytes"] < row["eager"]["bytes"]
    block = report["block_bytes"]
    assert block["fused"] < block["eager"]
    assert "GB/s" in done.stdout
