"""`keep_host_copies`: ``model.to(...)`` (whole model, or leaf modules as ComfyUI's partial loads move them) drops
device copies onto persistent host copies instead of copying back. The "device" is the meta device, which holds no
data: a model that comes back bit-identical from it can only have come back from its host copies."""

import pytest
import torch
from torch import nn

from wan_express.kernels.quantize import quantize_layers
from wan_express.kernels.quantized import QuantLinear, QuantOps, QuantScheme
from wan_express.loaders.dit.quant_targets import block_linear_layers
from wan_express.models import WanDiT
from wan_express.models.residency import keep_host_copies
from wan_express.synthetic import random_dit_weights

from .test_streaming_run import CONFIG, run, tiny_model


def test_model_round_trip_through_a_device_is_bit_identical_without_copying_back():
    reference = run(tiny_model())
    plain = tiny_model()
    plain.to("meta")
    with pytest.raises(NotImplementedError):  # an ordinary offload would have to copy the data back
        plain.to("cpu")
    model = keep_host_copies(tiny_model())
    for _ in range(2):
        model.to("meta")
        assert model.blocks[0].ffn[0].weight.device.type == "meta"
        model.to("cpu")
        assert torch.equal(run(model), reference)


def test_leaf_modules_moved_one_by_one_as_a_partial_load_does():
    reference = run(tiny_model())
    model = keep_host_copies(tiny_model())
    leaves = [module for module in model.modules() if module._parameters and not list(module.children())]
    for leaf in leaves[::2]:
        leaf.to("meta")
    for leaf in leaves[::2]:
        leaf.to("cpu")
    assert torch.equal(run(model), reference)


def test_a_replaced_weight_moves_the_ordinary_way_and_the_restored_original_takes_the_fast_path_again():
    model = keep_host_copies(tiny_model())
    linear = model.blocks[0].ffn[0]
    original_values = linear.weight.detach().clone()
    model.to("meta")
    original = linear._parameters["weight"]
    linear._parameters["weight"] = nn.Parameter(torch.empty_like(original), requires_grad=False)  # a host's patch
    with pytest.raises(NotImplementedError):  # the patched meta weight has no host copy to come back to
        linear.to("cpu")
    linear._parameters["weight"] = original  # the host's unpatch puts the backed-up original back
    model.to("cpu")
    assert torch.equal(linear.weight, original_values)


def test_cpu_edits_and_new_cpu_tensors_become_the_host_copy():
    model = keep_host_copies(tiny_model())
    linear = model.blocks[1].ffn[2]
    with torch.no_grad():
        linear.bias.add_(1.0)  # in place, on the host copy itself
    linear._parameters["weight"] = nn.Parameter(linear.weight.detach() * 2, requires_grad=False)  # replaced on CPU
    want_bias, want_weight = linear.bias.clone(), linear.weight.clone()
    model.to("meta")
    model.to("cpu")
    assert torch.equal(linear.bias, want_bias) and torch.equal(linear.weight, want_weight)


def test_quantized_codes_and_scales_and_dtype_casts():
    weights = random_dit_weights(CONFIG, 2)
    layers = block_linear_layers(weights, QuantScheme("fp8_e4m3"))
    build = lambda: WanDiT.from_state_dict(quantize_layers(dict(weights), layers), config=CONFIG,  # noqa: E731
                                           ops=QuantOps(layers, backend="dequant"))
    reference = run(build())
    model = keep_host_copies(build())
    assert isinstance(model.blocks[0].self_attn.q, QuantLinear)
    model.to("meta")
    model.to("cpu")
    assert model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    assert torch.equal(run(model), reference)
    norm = model.blocks[0].norm3.weight
    want = norm.detach().double()
    model.to(torch.float64)  # a dtype conversion goes the ordinary way, and its result is the host copy then
    model.to("meta")
    model.to("cpu")
    assert norm.dtype == torch.float64 and torch.equal(model.blocks[0].norm3.weight, want)


def test_an_unpatch_wrapping_the_host_copy_in_a_new_parameter_copies_nothing():
    model = keep_host_copies(tiny_model())
    linear = model.blocks[0].ffn[0]
    host_pointer = linear.weight.data_ptr()
    original = linear._parameters["weight"]
    linear._parameters["weight"] = nn.Parameter(original.data, requires_grad=False)  # core's set_attr_param(backup)
    model.to("meta")
    model.to("cpu")
    assert linear.weight.data_ptr() == host_pointer
    slots, _ = linear.__dict__["_wan_express_host_copies"]
    assert slots[(True, "weight")].host.data_ptr() == host_pointer
