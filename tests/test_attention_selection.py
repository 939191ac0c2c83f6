"""Which attention runs: the option, the call's kind and the GPU generation; the custom op as torch.compile sees
it; a tiny DiT forward with the 8-bit attention.

GPU generations are played by reporting a compute capability from `torch.cuda.get_device_capability`; the choice
needs nothing else of the device.
"""

import logging

import pytest
import torch

from wan_express.kernels import attention
from wan_express.kernels.attention import reference, selection
from wan_express.kernels.capability import _cuda_capability, triton_available
from wan_express.kernels.ops import ATTENTION_BACKENDS, TorchOps
from wan_express.kernels.quantized import QuantOps
from wan_express.models import WanDiT
from wan_express.synthetic import TINY_CONFIG, random_weights_

CUDA = torch.device("cuda", 0)
# The spec's proposed tolerance for a bf16 forward (networks.md §1.8): relative L2 of the velocity.
DIT_REL_L2 = 2e-2


@pytest.fixture
def gpu_generation(monkeypatch):
    def report(capability):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        _cuda_capability.cache_clear()
    yield report
    _cuda_capability.cache_clear()


def test_the_option_lists_the_8_bit_kernels():
    assert ATTENTION_BACKENDS == ("auto", "flash", "efficient", "cudnn", "math", "sage8", "sage8_bf16pv")
    QuantOps({}, attention="sage8")  # accepted by the quantized ops too


def test_auto_is_sdpa_off_cuda_for_both_kinds():
    for kind in selection.KINDS:
        assert selection.choose("auto", kind, torch.device("cpu"), 128) == "sdpa"


@pytest.mark.skipif(not triton_available(), reason="the 8-bit kernel needs Triton on a GPU")
@pytest.mark.parametrize("capability, self_choice", [((9, 0), "fp8"), ((8, 9), "fp8"), ((8, 6), "sdpa"),
                                                     ((10, 0), "fp8")])
def test_auto_takes_fp8_8_bit_self_attention_from_sm_8_9(gpu_generation, capability, self_choice):
    gpu_generation(capability)
    assert selection.choose("auto", "self", CUDA, 128) == self_choice
    assert selection.choose("auto", "self", CUDA, 64) == self_choice
    assert selection.choose("auto", "cross", CUDA, 128) == "sdpa"
    assert selection.choose("auto", "self", CUDA, 80) == "sdpa"  # a head dim the kernel has no tiles for


@pytest.mark.skipif(not triton_available(), reason="the 8-bit kernel needs Triton on a GPU")
def test_explicit_8_bit_options_run_every_kind_and_fall_back_to_bf16_pv_without_fp8(gpu_generation, caplog):
    gpu_generation((9, 0))
    assert [selection.choose("sage8", kind, CUDA, 128) for kind in selection.KINDS] == ["fp8", "fp8"]
    assert selection.choose("sage8_bf16pv", "cross", CUDA, 64) == "bf16"
    gpu_generation((8, 0))
    with caplog.at_level(logging.WARNING):
        assert selection.choose("sage8", "self", CUDA, 128) == "bf16"
    assert "no FP8 tensor cores" in caplog.text
    with caplog.at_level(logging.WARNING):
        assert selection.choose("sage8", "self", CUDA, 96) == "sdpa"
    assert "head dims" in caplog.text


def test_sdpa_kernels_and_bad_kinds():
    assert selection.choose("cudnn", "self", CUDA, 128) == "cudnn"
    with pytest.raises(ValueError, match="attention kind"):
        selection.choose("auto", "causal", torch.device("cpu"), 128)


def inputs(Lq=40, Lk=24, head_dim=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, length, head_dim, generator=generator).to(torch.bfloat16)
            for length in (Lq, Lk, Lk)]


def test_the_op_is_registered_and_its_fake_gives_the_real_shape_and_strides():
    q, k, v = inputs()
    real = torch.ops.wan_express.sage8_attention(q, k, v, "fp8")
    torch.testing.assert_close(real, reference.emulate(q, k, v, "fp8"), rtol=0, atol=0)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = torch.ops.wan_express.sage8_attention(*(mode.from_tensor(t) for t in (q, k, v)), "bf16")
    assert fake.shape == real.shape == (1, 2, 40, 64) and fake.stride() == real.stride()
    assert fake.dtype == real.dtype == torch.bfloat16
    torch.library.opcheck(torch.ops.wan_express.sage8_attention.default, (q, k, v, "fp8"),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("option", ["sage8", "sage8_bf16pv", "auto"])
def test_attention_compiles_without_graph_breaks(option):
    ops = TorchOps()
    ops.attention_backend = option

    def both_kinds(q, k, v):
        return ops.attention(q, k, v, kind="self") + ops.attention(q, k, v, kind="cross")

    q, k, v = inputs(24, 24)
    explained = torch._dynamo.explain(both_kinds)(q, k, v)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_tiny_dit_with_8_bit_attention_stays_within_the_bf16_tolerance():
    model = WanDiT(TINY_CONFIG)  # head dim 128
    random_weights_(model, seed=5)
    state = model.state_dict()
    generator = torch.Generator().manual_seed(6)
    latent = torch.randn(1, 16, 3, 6, 8, generator=generator)
    context = torch.randn(1, 9, TINY_CONFIG.text_dim, generator=generator)
    ops = TorchOps()
    ops.attention_backend = "sage8"
    eight_bit = WanDiT.from_state_dict(state, ops=ops)
    with torch.no_grad():
        want, got = model(latent, torch.tensor([700.0]), context), eight_bit(latent, torch.tensor([700.0]), context)
    error = reference.errors(got, want)
    assert error["rel_l2"] <= DIT_REL_L2 and error["cosine"] >= 0.999, error


def test_entry_point_returns_the_query_dtype():
    q, k, v = (t.float() for t in inputs())
    assert attention.attention(q, k, v, "sage8", "self").dtype == torch.float32
