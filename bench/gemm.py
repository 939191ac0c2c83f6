"""W8A8 GEMMs at Wan-14B shapes: bf16 F.linear vs FP8 (`_scaled_mm` tensor-/row-wise, our Triton kernels) vs INT8
(`_int_mm` + separate scaling, our Triton kernels), plus activation quantization and one block's linear set.

The linear set is reported twice: "conservative" adds a standalone quantization of each distinct input to the
GEMMs; "as run in the model" adds, on every side, the ops that produce the linears' inputs in the DiT: the eager
fp32 LN + modulation, affine LN and GELU (and the cast to bf16) for bf16, the fused producers for FP8/INT8, where
only the two attention outputs (inputs of the O projections) are quantized by the standalone kernel.

Usage: ``python bench/gemm.py [--tokens 32760 75600] [--json gemm.json]`` on a CUDA GPU, with the pack importable
as ``wan_express``.
Times are `triton.testing.do_bench` medians over random normal inputs; TFLOPS count 2·M·N·K.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from wan_express.kernels import backends, triton_gemm
from wan_express.kernels.act_quant import (gelu_tanh_quantized, layer_norm_quantized, norm_modulate_quantized,
                                           quantize_rows, quantize_rows_reference)
from wan_express.kernels.ops import TorchOps
from wan_express.kernels.quantize import quantize_weight
from wan_express.kernels.quantized import QuantScheme

DIM, FFN, EPS = 5120, 13824, 1e-6
# One block's video-token linears (spec performance.md §2.2): self q, k, v, o and cross q, o; FFN up and down.
BLOCK_LINEARS = [("attn", DIM, DIM)] * 6 + [("ffn_up", DIM, FFN), ("ffn_down", FFN, DIM)]
# Distinct linear inputs per block that need quantizing: shared QKV input, self-attention output, cross-attention
# query input, cross-attention output, FFN input (width DIM) and the GELU output (width FFN).
QUANTIZED_INPUTS = [DIM] * 5 + [FFN]
# Per-shape candidates of "auto" (kernels.backends): what a QuantLinear can pick.
AUTO_CANDIDATES = {"fp8": ("fp8 _scaled_mm rowwise fa", "fp8 triton"),
                   "int8": ("int8 _int_mm + scaling", "int8 triton")}


def median_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def bench_shape(M: int, K: int, N: int) -> dict[str, float]:
    """Milliseconds per variant for out[M, N] = x[M, K] @ W[N, K]ᵀ + b."""
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(N, K, device="cuda") / K ** 0.5
    bias = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    w_bf16 = weight.to(torch.bfloat16)
    times = {"bf16 F.linear": median_ms(lambda: F.linear(x, w_bf16, bias))}

    w8, w_scale = quantize_weight(weight, QuantScheme("fp8_e4m3"))
    a8 = quantize_rows(x, "fp8_e4m3")
    a_codes, a_scale, w_row = a8.codes, a8.scale, w_scale.reshape(1, N).contiguous()
    one = torch.ones((), device="cuda")
    times["fp8 _scaled_mm tensorwise fa"] = median_ms(lambda: torch._scaled_mm(
        a_codes, w8.t(), scale_a=one, scale_b=one, bias=bias, out_dtype=torch.bfloat16, use_fast_accum=True))
    times["fp8 _scaled_mm rowwise fa"] = median_ms(lambda: backends.scaled_mm(a_codes, a_scale, w8, w_row, bias))
    times.update(triton_kernels("fp8", a_codes, a_scale, w8, w_row, bias))

    w_int8, w_scale_int8 = quantize_weight(weight, QuantScheme("int8"))
    a_int8 = quantize_rows(x, "int8")
    w_row_int8 = w_scale_int8.reshape(1, N).contiguous()
    times["int8 _int_mm alone"] = median_ms(lambda: torch._int_mm(a_int8.codes, w_int8.t()))
    times["int8 _int_mm + scaling"] = median_ms(
        lambda: backends.int_mm(a_int8.codes, a_int8.scale, w_int8, w_row_int8, bias))
    times.update(triton_kernels("int8", a_int8.codes, a_int8.scale, w_int8, w_row_int8, bias))
    return times


def triton_kernels(label: str, a, a_scale, weight, w_scale, bias) -> dict[str, float]:
    """Our tiled kernel alone, and the kernel `backends.triton_gemm` runs on this device (persistent TMA on
    Hopper), which is the one "auto" chooses from."""
    out = torch.empty(a.shape[0], weight.shape[0], dtype=torch.bfloat16, device="cuda")
    return {f"{label} triton tiled": median_ms(
                lambda: triton_gemm.scaled_gemm(a, a_scale, weight, w_scale, bias, out, persistent=False)),
            f"{label} triton": median_ms(lambda: backends.triton_gemm(a, a_scale, weight, w_scale, bias))}


def bench_quantization(M: int, K: int) -> dict[str, float]:
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    return {"fp8 triton": median_ms(lambda: quantize_rows(x, "fp8_e4m3")),
            "int8 triton": median_ms(lambda: quantize_rows(x, "int8")),
            "fp8 eager torch": median_ms(lambda: quantize_rows_reference(x, "fp8_e4m3"))}


def bench_producers(M: int) -> dict[str, dict[str, float]]:
    """Milliseconds of the ops producing one block's linear inputs, per precision, as the DiT runs them.

    x: [1, M, DIM] fp32 residual stream; shift/scale: [1, 1, DIM] (one timestep for all tokens); hidden: the
    FFN-up output [M, FFN] in bf16; attention: an attention output [M, DIM] in bf16 (feeds an O projection).
    """
    generator = torch.Generator(device="cuda").manual_seed(M)
    x = torch.randn(1, M, DIM, device="cuda", generator=generator)
    shift, scale = (0.1 * torch.randn(1, 1, DIM, device="cuda", generator=generator) for _ in range(2))
    weight = 1 + 0.1 * torch.randn(DIM, device="cuda", generator=generator)
    bias = 0.1 * torch.randn(DIM, device="cuda", generator=generator)
    hidden = torch.randn(M, FFN, device="cuda", generator=generator).to(torch.bfloat16)
    attention = torch.randn(M, DIM, device="cuda", generator=generator).to(torch.bfloat16)
    ops = TorchOps()
    # bf16: the eager fp32 ops, then CastLinear's cast of their fp32 output to the bf16 weight dtype.
    bf16 = {"norm_modulate": median_ms(lambda: ops.norm_modulate(x, shift, scale, EPS, name="q").to(torch.bfloat16)),
            "layer_norm": median_ms(lambda: ops.layer_norm(x, weight, bias, EPS, name="q").to(torch.bfloat16)),
            "gelu_tanh": median_ms(lambda: F.gelu(hidden, approximate="tanh")),
            "attention output": 0.0}
    total = {"bf16": bf16["norm_modulate"] * 2 + bf16["layer_norm"] + bf16["gelu_tanh"]}
    parts = {"bf16": bf16}
    for label, codes in (("fp8", "fp8_e4m3"), ("int8", "int8")):
        fused = {"norm_modulate": median_ms(lambda: norm_modulate_quantized(x, shift, scale, EPS, codes)),
                 "layer_norm": median_ms(lambda: layer_norm_quantized(x, weight, bias, EPS, codes)),
                 "gelu_tanh": median_ms(lambda: gelu_tanh_quantized(hidden, codes)),
                 "attention output": median_ms(lambda: quantize_rows(attention, codes))}
        parts[label] = fused
        # Producers: 2× LN + modulation (self-attention, FFN), 1× affine LN (cross-attention query), 1× GELU;
        # standalone quantization of the self- and cross-attention outputs.
        total[label] = (fused["norm_modulate"] * 2 + fused["layer_norm"] + fused["gelu_tanh"]
                        + fused["attention output"] * 2)
    return {"parts": parts, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[32760, 75600])
    parser.add_argument("--json", default="gemm.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": __import__("triton").__version__, "shapes": [], "quantization": [], "block": []}
    header = f"{'M x K -> N':>22} " + " ".join(f"{name:>14}" for name in (
        "bf16", "fp8 tensor", "fp8 row cuBLAS", "fp8 tiled", "fp8 triton", "int8 _int_mm", "_int_mm+scale",
        "int8 tiled", "int8 triton"))
    print(f"{report['device']}, torch {report['torch']}, triton {report['triton']}; TFLOPS (median)")
    print(header)
    for M in args.tokens:
        per_shape = {}
        for K, N in sorted({(k, n) for _, k, n in BLOCK_LINEARS}):
            times = bench_shape(M, K, N)
            per_shape[(K, N)] = times
            tflops = {name: 2 * M * N * K / ms / 1e9 for name, ms in times.items()}
            report["shapes"].append({"M": M, "K": K, "N": N, "ms": times, "tflops": tflops})
            print(f"{f'{M} x {K} -> {N}':>22} " + " ".join(f"{value:14.0f}" for value in tflops.values()))
        quant = {K: bench_quantization(M, K) for K in sorted(set(QUANTIZED_INPUTS))}
        for K, times in quant.items():
            report["quantization"].append({"M": M, "K": K, "ms": times})
        producers = bench_producers(M)
        # One block's linear set, GEMMs at the per-shape choice of "auto". Conservative: plus a standalone
        # quantization of each distinct input. As run in the model: plus the producers of every side.
        bf16_gemms = sum(per_shape[(k, n)]["bf16 F.linear"] for _, k, n in BLOCK_LINEARS)
        total = {"bf16 GEMMs": bf16_gemms, "bf16 as run in the model": bf16_gemms + producers["total"]["bf16"]}
        for label in ("fp8", "int8"):
            gemms = sum(min(per_shape[(k, n)][name] for name in AUTO_CANDIDATES[label]) for _, k, n in BLOCK_LINEARS)
            quantize = sum(quant[K][f"{label} triton"] for K in QUANTIZED_INPUTS)
            total[f"{label} GEMMs"] = gemms
            total[f"{label} GEMMs + standalone quantization (conservative)"] = gemms + quantize
            total[f"{label} as run in the model"] = gemms + producers["total"][label]
        speedup = {name: (total["bf16 as run in the model"] if "model" in name else bf16_gemms) / ms
                   for name, ms in total.items()}
        report["block"].append({"M": M, "ms": total, "speedup_vs_bf16": speedup, "producers_ms": producers["parts"]})
    for entry in report["quantization"]:
        print(f"quantize {entry['M']} x {entry['K']}: " + ", ".join(
            f"{name} {ms:.3f} ms" for name, ms in entry["ms"].items()))
    for entry in report["block"]:
        for label, parts in entry["producers_ms"].items():
            print(f"input producers {label}, M = {entry['M']}: " + ", ".join(
                f"{name} {ms:.3f} ms" for name, ms in parts.items()))
        print(f"block linear set, M = {entry['M']}: " + ", ".join(
            f"{name} {ms:.2f} ms ({entry['speedup_vs_bf16'][name]:.2f}x)" for name, ms in entry["ms"].items()))
    report["triton_configs"] = {str(key): str(config) for key, config in triton_gemm._tuned_kernel.cache.items()}
    report["triton_configs"]["persistent (fixed)"] = str(triton_gemm.WIDE_TMA_TILE)
    for key, config in report["triton_configs"].items():
        print(f"autotuned {key}: {config}")
    with open(args.json, "w") as file:
        json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
