"""`torch.compile` of the Wan DiT (kernels.compile): no graph break in a quantized block or the whole forward, one graph
shared by every block, compiled output equal to eager, LoRA strength changes reaching compiled graphs, and the custom
ops' fake implementations agreeing with the real ones.

On the CPU the quantized linears take the dequantizing fallback of the custom ops (with the activation quantization
emulated, so the quantizer ops run too); the fused-producer path is forced where a test says so. The compiled runs use
the ``aot_eager`` backend: the same graph capture and fake-tensor tracing as inductor, without a C++ build.
"""

import dataclasses

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from wan_express.errors import InvalidInputError
from wan_express.kernels import custom_ops
from wan_express.kernels import quantized as quantized_module
from wan_express.kernels.compile import compile_dit, warm_up
from wan_express.kernels.quantize import quantize_layers, quantize_weight
from wan_express.kernels.quantized import QuantizedActivation, QuantOps, QuantScheme
from wan_express.loaders.dit.quant_targets import block_linear_layers
from wan_express.loaders.lora.attach import attach_loras
from wan_express.loaders.lora.format import parse_lora
from wan_express.loaders.lora.merge import AppliedLora
from wan_express.models import WanDiT
from wan_express.synthetic import TINY_CONFIG, random_weights_

CONFIG = dataclasses.replace(TINY_CONFIG, num_layers=2)
SCHEMES = {"fp8": QuantScheme("fp8_e4m3"), "int8": QuantScheme("int8")}
TOLERANCE = 1e-5  # max abs error / max |output|: the same ops in the same order, only the capture differs


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def float_model(seed=0) -> WanDiT:
    model = WanDiT(CONFIG)
    random_weights_(model, seed)
    return model.requires_grad_(False).eval()


def quantized_model(codes: str) -> WanDiT:
    state = float_model().state_dict()
    layers = block_linear_layers(state, SCHEMES[codes])
    ops = QuantOps(layers, emulate_activations=True)
    return WanDiT.from_state_dict(quantize_layers(state, layers), config=CONFIG, ops=ops).eval()


def inputs(seed=3):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(1, CONFIG.out_dim, 2, 4, 6, generator=generator), torch.tensor([600.0]),
            torch.randn(1, 7, CONFIG.text_dim, generator=generator))


def block_arguments(model: WanDiT) -> tuple:
    """The arguments the first block is called with in a forward of `inputs`."""
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda module, args: seen.setdefault("args", args))
    warm_up(model, *inputs())
    hook.remove()
    return seen["args"]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("codes", sorted(SCHEMES))
@pytest.mark.parametrize("fused", [False, True], ids=["dequant", "fused-producers"])
def test_a_quantized_block_and_the_whole_forward_trace_without_graph_breaks(codes, fused, monkeypatch):
    if fused:  # the producers emit codes (CUDA + Triton); forced so the CPU traces that path with the reference ops
        monkeypatch.setattr(quantized_module, "fuses_quantization", lambda scheme, backend, device: True)
    model = quantized_model(codes)
    args = block_arguments(model)
    with torch.no_grad():
        block = torch._dynamo.explain(model.blocks[0])(*args)
        torch._dynamo.reset()
        whole = torch._dynamo.explain(model)(*inputs())
    assert (block.graph_count, block.graph_break_count) == (1, 0), block.break_reasons
    assert (whole.graph_count, whole.graph_break_count) == (1, 0), whole.break_reasons
    assert "wan_express.w8a8_gemm" in str(whole.graphs[0].graph) or "wan_express.dequant_linear" in str(
        whole.graphs[0].graph)


@pytest.mark.parametrize("codes, mode", [("fp8", "block"), ("int8", "full")])
def test_compiled_output_matches_eager_with_one_graph_for_every_block(codes, mode):
    model = quantized_model(codes)
    want = warm_up(model, *inputs())
    counter = CompileCounterWithBackend("aot_eager")
    assert compile_dit(model, mode, backend=counter) is model
    with torch.no_grad():
        first, again = model(*inputs()), model(*inputs())
    assert counter.frame_count == 1  # block mode: both blocks share one graph (no per-block recompile)
    assert relative_error(first, want) <= TOLERANCE and torch.equal(first, again)
    assert set(model.state_dict()) == set(quantized_model(codes).state_dict())


def test_the_whole_forward_compiles_once_per_resolution_even_without_a_warm_up():
    model = float_model()
    counter = CompileCounterWithBackend("eager")
    compile_dit(model, "full", backend=counter, dynamic=False)
    generator = torch.Generator().manual_seed(0)
    frames = []
    with torch.no_grad():
        for height in (4, 4, 6, 6):
            model(torch.randn(1, CONFIG.out_dim, 2, height, 6, generator=generator), torch.tensor([600.0]),
                  torch.randn(1, 7, CONFIG.text_dim, generator=generator))
            frames.append(counter.frame_count)
    assert frames == [1, 1, 2, 2]  # (the RoPE tables are computed in the graph, not read from a guarded cache)


def test_compile_off_leaves_the_model_eager_and_unknown_modes_are_refused():
    model = quantized_model("int8")
    assert compile_dit(model, "off") is model
    assert model._compiled_call_impl is None and all(block._compiled_call_impl is None for block in model.blocks)
    with pytest.raises(InvalidInputError, match="unknown compile mode 'max'"):
        compile_dit(model, "max")


def lora_for(model: WanDiT, seed=1, rank=4):
    """A LoRA of low-rank pairs on every block linear and a bias diff on each FFN output (written into the bias)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, param in model.state_dict().items():
        if not key.startswith("blocks.") or param.dim() != 2 or key.endswith("weight_scale"):
            continue
        layer = key.removesuffix(".weight")
        out_features, in_features = param.shape
        tensors[f"diffusion_model.{layer}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) / 20
        tensors[f"diffusion_model.{layer}.lora_down.weight"] = torch.randn(rank, in_features,
                                                                           generator=generator) / in_features ** 0.5
        if layer.endswith("ffn.2"):
            tensors[f"diffusion_model.{layer}.diff_b"] = torch.randn(out_features, generator=generator) / 10
    return parse_lora(tensors, "lora")


@pytest.mark.parametrize("kind, mode", [("float", "full"), ("int8", "block")])
def test_changing_a_lora_strength_after_compiling_changes_the_compiled_output(kind, mode):
    def build():
        model = float_model() if kind == "float" else quantized_model(kind)
        return model, attach_loras(model, [AppliedLora(lora_for(model), 1.0)])

    model, attachment = build()
    eager, eager_attachment = build()
    counter = CompileCounterWithBackend("aot_eager")
    warm_up(model, *inputs())
    compile_dit(model, mode, backend=counter)
    with torch.no_grad():
        outputs = {}
        for strength in (1.0, 0.3, 0.0, -0.7):
            attachment.set_strength(0, strength)
            eager_attachment.set_strength(0, strength)
            outputs[strength] = model(*inputs())
            assert relative_error(outputs[strength], eager(*inputs())) <= TOLERANCE, strength
    assert relative_error(outputs[1.0], outputs[0.3]) > 1e-3  # the strength does reach the compiled graph
    assert counter.frame_count == 1  # strengths are tensors: no recompile per change
    attachment.detach()
    eager_attachment.detach()


def test_fake_implementations_agree_with_the_ops():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 64, generator=generator)
    shift, scale = torch.randn(2, 1, 64, generator=generator) / 4, torch.randn(2, 1, 64, generator=generator) / 4
    weight, bias = torch.randn(64, generator=generator), torch.randn(64, generator=generator)
    for codes in ("fp8_e4m3", "int8"):
        cases = [(custom_ops.quantize_rows, (x, codes)), (custom_ops.gelu_tanh_quant, (x, codes)),
                 (custom_ops.norm_modulate_quant, (x, shift, scale, 1e-6, codes)),
                 (custom_ops.layer_norm_quant, (x, weight, bias, 1e-6, codes)),
                 (custom_ops.rms_norm_quant, (x, weight.to(torch.bfloat16), 1e-6, codes))]
        for op, args in cases:
            torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
        scheme = SCHEMES["fp8" if codes == "fp8_e4m3" else "int8"]
        w_codes, w_scale = quantize_weight(torch.randn(48, 64, generator=generator) / 8, scheme)
        activation = QuantizedActivation(*custom_ops.quantize_rows(x.reshape(-1, 64), codes))
        gemm_bias = torch.randn(48, generator=generator).to(torch.bfloat16)
        # code inputs: fake tensors only (the schema check multiplies every input, which float8 cannot on the CPU)
        torch.library.opcheck(custom_ops.w8a8_gemm, (activation.codes, activation.scale, w_codes,
                                                     w_scale.reshape(1, -1).contiguous(), gemm_bias, "auto"),
                              test_utils=("test_faketensor",))
        torch.library.opcheck(custom_ops.dequant_linear, (x, w_codes, w_scale, None, torch.float32),
                              test_utils=("test_faketensor",))
        # the dequantizing GEMM is the float product of the dequantized operands
        got = custom_ops.w8a8_gemm(activation.codes, activation.scale, w_codes, w_scale.reshape(1, -1).contiguous(),
                                   gemm_bias, "auto")
        want = activation.dequantize() @ (w_codes.float() * w_scale).t() + gemm_bias.float()
        assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), want, rtol=1e-2, atol=1e-2)
