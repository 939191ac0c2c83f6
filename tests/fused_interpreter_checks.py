"""Runs the Triton kernels of `kernels.triton_fused` under Triton's CPU interpreter against the eager references of
`kernels.fused` and prints their errors as JSON (`test_fused_ops.py` starts it with TRITON_INTERPRET=1 in a fresh
process: the interpreter must be chosen before Triton is first imported).
"""

import json

import torch

from wan_express.kernels import fused, triton_fused
from wan_express.kernels.ops import TorchOps
from wan_express.models import WanDiT
from wan_express.synthetic import TINY_CONFIG, random_dit_weights

# (batch, tokens, heads, head dim): tails everywhere (7 and 13 tokens; 3 heads of 64 make a 96-pair row in a 128 block)
NORM_CASES = [(2, 7, 3, 64), (1, 13, 2, 128), (2, 5, 1, 128)]


def ulp_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference in units of the bf16 spacing at the reference value (1.0: one bf16 step)."""
    spacing = torch.finfo(torch.bfloat16).eps * want.abs().clamp(min=2.0 ** -60)
    return ((got.float() - want.float()).abs() / spacing).max().item()


def norm_errors(batch: int, tokens: int, heads: int, head_dim: int, x_dtype, out_dtype, rope: bool) -> dict:
    generator = torch.Generator().manual_seed(tokens * head_dim)
    x = (3 * torch.randn(batch, tokens, heads * head_dim, generator=generator)).to(x_dtype)
    weight = 1 + 0.1 * torch.randn(heads * head_dim, generator=generator)
    cos, sin = (table[:tokens] for table in fused.rope_tables((4, 2, 2), head_dim, torch.device("cpu")))
    out = torch.full(x.shape, float("nan"), dtype=out_dtype)
    if rope:
        triton_fused.rms_norm_rope(x, weight, cos, sin, 1e-6, out)
        want = fused.qk_norm_rope_reference(x, weight, cos, sin, 1e-6, out_dtype)
    else:
        triton_fused.rms_norm_rope(x, weight, None, None, 1e-6, out)
        want = fused.qk_norm_reference(x, weight, 1e-6, out_dtype)
    return {"finite": bool(torch.isfinite(out).all()),
            "max_abs_error": (out.float() - want.float()).abs().max().item(), "max_bf16_ulps": ulp_error(out, want)}


def residual_errors(gate_kind: str, sliced: bool) -> dict:
    generator = torch.Generator().manual_seed(3)
    stream = torch.randn(2, 9, 1100, generator=generator)  # 1100: two column tiles, the second partial
    update = torch.randn(2, 9, 1100, generator=generator).to(torch.bfloat16)
    gate = {"none": None, "per_sample": torch.randn(2, 1, 1100, generator=generator),
            "per_token": torch.randn(2, 9, 1100, generator=generator)}[gate_kind]
    tokens = slice(2, 7) if sliced else slice(None)
    got, want = stream.clone(), stream.clone()
    part_gate = gate if gate is None or gate.shape[1] == 1 else gate[:, tokens]
    triton_fused.gated_residual(got[:, tokens], update[:, tokens], part_gate)
    fused.gated_residual_reference_(want[:, tokens], update[:, tokens], part_gate)
    return {"max_abs_error": (got - want).abs().max().item(),
            "untouched_equal": bool(torch.equal(got[:, :2], want[:, :2]) and torch.equal(got[:, 7:], want[:, 7:]))}


class InterpretedOps(TorchOps):
    """The fused ops on the Triton kernels (interpreted), where `TorchOps` would take the references on a CPU."""

    def qk_norm_rope(self, x, weight, rope, eps, dtype):
        out = torch.empty(x.shape, dtype=dtype)
        triton_fused.rms_norm_rope(x, weight, *rope, eps, out)
        return out

    def qk_norm(self, x, weight, eps, dtype):
        out = torch.empty(x.shape, dtype=dtype)
        triton_fused.rms_norm_rope(x, weight, None, None, eps, out)
        return out

    def gated_residual_(self, residual, update, gate):
        triton_fused.gated_residual(residual, update, gate)


def dit_errors() -> dict:
    """A tiny bf16 DiT forward with the kernels vs with the references (both against the fp32 model too)."""
    weights = random_dit_weights(TINY_CONFIG, seed=4)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 3, 6, 10, generator=generator)
    context = torch.randn(1, 9, TINY_CONFIG.text_dim, generator=generator)
    t = torch.tensor([640.0])
    with torch.no_grad():
        outputs = {name: WanDiT.from_state_dict(weights, dtype=dtype, ops=ops)(x, t, context)
                   for name, dtype, ops in (("fp32", torch.float32, TorchOps()),
                                            ("reference", torch.bfloat16, TorchOps()),
                                            ("kernels", torch.bfloat16, InterpretedOps()))}
    relative_l2 = lambda got, want: (torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want)).item()  # noqa: E731
    return {"kernels_vs_reference_rel_l2": relative_l2(outputs["kernels"], outputs["reference"]),
            "kernels_vs_reference_max_abs": (outputs["kernels"] - outputs["reference"]).abs().max().item(),
            "reference_max_abs": outputs["reference"].abs().max().item(),
            "kernels_vs_fp32_rel_l2": relative_l2(outputs["kernels"], outputs["fp32"]),
            "reference_vs_fp32_rel_l2": relative_l2(outputs["reference"], outputs["fp32"])}


def main() -> None:
    results = {}
    for batch, tokens, heads, head_dim in NORM_CASES:
        for x_dtype, out_dtype in ((torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)):
            for rope in (True, False):
                key = f"{'rope' if rope else 'norm'} B={batch} L={tokens} H={heads} d={head_dim} {x_dtype}->{out_dtype}"
                results[key] = norm_errors(batch, tokens, heads, head_dim, x_dtype, out_dtype, rope)
    for gate_kind in ("none", "per_sample", "per_token"):
        for sliced in (False, True):
            results[f"residual gate={gate_kind} sliced={sliced}"] = residual_errors(gate_kind, sliced)
    results["tiny dit bf16"] = dit_errors()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
