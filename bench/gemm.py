"""W8A8 GEMMs at Wan-14B shapes: bf16 F.linear vs FP8 (`_scaled_mm` tensor-/row-wise, our Triton kernel) vs INT8
(`_int_mm` + separate scaling, our Triton kernel), plus activation quantization and one block's linear set.

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

from wan_express.kernels import backends
from wan_express.kernels.act_quant import quantize_rows, quantize_rows_reference
from wan_express.kernels.quantize import quantize_weight
from wan_express.kernels.quantized import QuantScheme

DIM, FFN = 5120, 13824
# One block's video-token linears (spec performance.md §2.2): self q, k, v, o and cross q, o; FFN up and down.
BLOCK_LINEARS = [("attn", DIM, DIM)] * 6 + [("ffn_up", DIM, FFN), ("ffn_down", FFN, DIM)]
# Distinct linear inputs per block that need quantizing: shared QKV input, attention output, cross-attention
# query input, FFN input (width DIM) and the GELU output (width FFN).
QUANTIZED_INPUTS = [DIM] * 4 + [FFN]


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
    times["fp8 triton rowwise"] = median_ms(lambda: backends.triton_gemm(a_codes, a_scale, w8, w_row, bias))

    w_int8, w_scale_int8 = quantize_weight(weight, QuantScheme("int8"))
    a_int8 = quantize_rows(x, "int8")
    w_row_int8 = w_scale_int8.reshape(1, N).contiguous()
    times["int8 _int_mm alone"] = median_ms(lambda: torch._int_mm(a_int8.codes, w_int8.t()))
    times["int8 _int_mm + scaling"] = median_ms(
        lambda: backends.int_mm(a_int8.codes, a_int8.scale, w_int8, w_row_int8, bias))
    times["int8 triton"] = median_ms(
        lambda: backends.triton_gemm(a_int8.codes, a_int8.scale, w_int8, w_row_int8, bias))
    return times


def bench_quantization(M: int, K: int) -> dict[str, float]:
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    return {"fp8 triton": median_ms(lambda: quantize_rows(x, "fp8_e4m3")),
            "int8 triton": median_ms(lambda: quantize_rows(x, "int8")),
            "fp8 eager torch": median_ms(lambda: quantize_rows_reference(x, "fp8_e4m3"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[32760, 75600])
    parser.add_argument("--json", default="gemm.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": __import__("triton").__version__, "shapes": [], "quantization": [], "block": []}
    header = f"{'M x K -> N':>22} " + " ".join(f"{name:>14}" for name in (
        "bf16", "fp8 tensor", "fp8 row cuBLAS", "fp8 row triton", "int8 _int_mm", "_int_mm+scale", "int8 triton"))
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
        # One block's linear set: the GEMMs plus quantizing each distinct input with the standalone kernel
        # (the fused producers make part of that free; bench/dit_block.py measures the real block).
        total = {"bf16": sum(per_shape[(k, n)]["bf16 F.linear"] for _, k, n in BLOCK_LINEARS)}
        for label, codes, names in (("fp8", "fp8 triton", ("fp8 _scaled_mm rowwise fa", "fp8 triton rowwise")),
                                    ("int8", "int8 triton", ("int8 _int_mm + scaling", "int8 triton"))):
            gemms = sum(min(per_shape[(k, n)][name] for name in names) for _, k, n in BLOCK_LINEARS)
            quantize = sum(quant[K][codes] for K in QUANTIZED_INPUTS)
            total[f"{label} GEMMs"] = gemms
            total[f"{label} GEMMs + quantization"] = gemms + quantize
        report["block"].append({"M": M, "ms": total, "speedup_vs_bf16": {
            name: total["bf16"] / ms for name, ms in total.items()}})
    for entry in report["quantization"]:
        print(f"quantize {entry['M']} x {entry['K']}: " + ", ".join(
            f"{name} {ms:.3f} ms" for name, ms in entry["ms"].items()))
    for entry in report["block"]:
        print(f"block linear set, M = {entry['M']}: " + ", ".join(
            f"{name} {ms:.2f} ms ({entry['speedup_vs_bf16'][name]:.2f}x)" for name, ms in entry["ms"].items()))
    with open(args.json, "w") as file:
        json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
