"""Block streaming and host copies on a real CUDA device: pinned host copies, non_blocking copies on the side
stream, bit-identical outputs, and ``.to("cpu")`` that drops onto the pinned copy without allocating (skipped
without CUDA)."""

import pytest
import torch

from wan_express.models.residency import ModelResidency, keep_host_copies
from wan_express.models.streaming import WeightPool, block_bytes, stream_blocks, streamer_of
from wan_express.sampling import DistillSchedule, sample

from .test_lora_apply import run as run_with
from .test_sampling_loop import t2v_conditioning
from .test_streaming_run import CONFIG, budget_for, device_bytes_at_each_block, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def run(model):
    return run_with(model, CONFIG, device="cuda")


def test_streamed_forward_on_cuda_is_bit_identical_from_pinned_copies():
    reference = run(tiny_model().cuda())
    model = tiny_model()
    streamer = stream_blocks(model, budget_for(model, 1, 1), "cuda", prefetch=1)
    residency = ModelResidency.of(model)
    assert residency.pinned
    assert all(slot.host.is_pinned() for group in residency.groups for slot in group.slots.values())
    seen = device_bytes_at_each_block(model)
    for _ in range(3):
        assert torch.equal(run(model), reference)
    assert streamer.plan.streams and max(seen) <= streamer.plan.peak_bytes
    assert model.blocks[streamer.plan.streamed[0]].ffn[0].weight.device.type == "cuda"  # wrap-around prefetch


def test_pair_on_cuda_drops_the_idle_expert_and_matches_the_resident_run():
    high, low = tiny_model(seed=1), tiny_model(seed=2)
    reference = sample((tiny_model(seed=1).cuda(), tiny_model(seed=2).cuda()), t2v_conditioning(),
                       schedule=DistillSchedule(), seed=3, device="cuda")
    sizes, rest = block_bytes(high)
    budget = ModelResidency.of(high).nbytes + rest + max(sizes)
    pool = WeightPool(budget)
    for expert in (high, low):
        stream_blocks(expert, budget, "cuda", pool=pool)
    got = sample((high, low), t2v_conditioning(), schedule=DistillSchedule(), seed=3, device="cuda")
    assert torch.equal(got, reference)
    assert ModelResidency.of(high).device_bytes() == 0
    assert not streamer_of(low).plan.streams


def test_to_cpu_drops_onto_the_pinned_copy_without_a_new_allocation():
    model = keep_host_copies(tiny_model())
    linear = model.blocks[0].ffn[0]
    host_pointer = linear.weight.data_ptr()
    assert linear.weight.is_pinned()
    reference = run_with(model, CONFIG)
    on_cuda = None
    for _ in range(2):
        model.to("cuda")
        assert linear.weight.device.type == "cuda"
        got = run(model)
        assert on_cuda is None or torch.equal(got, on_cuda)
        on_cuda = got
        model.to("cpu")
        assert linear.weight.data_ptr() == host_pointer  # the same pinned memory, nothing copied back
    assert torch.equal(run_with(model, CONFIG), reference)
