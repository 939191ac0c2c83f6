"""Block streaming and pinned-copy expert switching, run on CPU with the "device" being the CPU too (every move is
a copy between two CPU tensors): outputs bit-identical with and without, hooks in the planned order, the budget
held at every block, Wan2.2 pairs sharing one budget with the look-ahead prefetch before the switch, FP8 files and
LoRA side branches."""

import pytest
import torch

from wan_express.errors import InvalidInputError
from wan_express.loaders import load_dit
from wan_express.loaders.lora.attach import attach_loras
from wan_express.models import WanConfig, WanDiT
from wan_express.models.residency import ModelResidency
from wan_express.models.streaming import GIB, WeightPool, block_bytes, stream_blocks, streamer_of
from wan_express.sampling import DistillSchedule, sample
from wan_express.synthetic import random_dit_weights, write_official_folder

from .loader_files import tiny_weights, write_lightx2v
from .test_lora_apply import run as run_with, stack
from .test_sampling_loop import t2v_conditioning

# 128-wide, five blocks: enough to stream some and keep others; the sampling tests' text width
CONFIG = WanConfig("t2v", 16, 16, dim=128, ffn_dim=256, num_heads=1, num_layers=5, text_dim=32)


def run(model):
    return run_with(model, CONFIG)


def tiny_model(seed=0, config=CONFIG):
    return WanDiT.from_state_dict(random_dit_weights(config, seed), config=config)


def budget_for(model, resident_blocks, prefetch):
    """The weight budget that keeps ``resident_blocks`` blocks next to ``prefetch + 1`` streamed ones."""
    sizes, rest = block_bytes(model)
    return rest + (resident_blocks + prefetch + 1) * max(sizes)


def device_bytes_at_each_block(model):
    """Weight bytes on the device as every block starts (hooks registered after the streamer's run after it)."""
    seen = []
    residency = ModelResidency.of(model)
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(residency.device_bytes()))
    return seen


def test_streamed_forward_is_bit_identical_and_follows_the_plan():
    reference = run(tiny_model())
    model = tiny_model()
    trace = []
    streamer = stream_blocks(model, budget_for(model, 2, 1), "cpu", prefetch=1, trace=trace)
    plan = streamer.plan
    assert (len(plan.resident), len(plan.streamed), plan.prefetch) == (2, 3, 1)
    seen = device_bytes_at_each_block(model)
    live = set()  # streamed blocks on the device, across forwards (the last blocks prefetch the next forward's)
    for _ in range(2):
        trace.clear()
        assert torch.equal(run(model), reference)
        events = [(what, int(name.split(".")[1])) for what, name in trace if name != "rest"]
        readies = [index for what, index in events if what == "ready"]
        assert [i for i in readies if i in plan.streamed] == list(plan.streamed)  # each once, in run order
        assert [index for what, index in events if what == "drop"] == list(plan.streamed)
        for what, index in events:
            if index not in plan.streamed:
                continue
            if what == "prefetch":
                live.add(index)
            elif what == "ready":
                assert index in live  # its copy was started ahead of its turn
            else:
                live.discard(index)
            assert len(live) <= plan.prefetch + 1
    assert max(seen) <= plan.peak_bytes
    assert all(ModelResidency.of(model).blocks[i].state == "device" for i in plan.resident)


def test_a_budget_too_small_for_one_block_names_the_sizes():
    model = tiny_model()
    sizes, rest = block_bytes(model)
    with pytest.raises(InvalidInputError, match=r"weight budget of [\d.]+ GB cannot run the model: its non-block weights take"):
        stream_blocks(model, rest + sizes[0] - 1, "cpu")


def test_fp8_file_loaded_under_a_budget_runs_bit_identical(tmp_path):
    path = write_lightx2v(tmp_path / "wan2.1_t2v_fp8_lightx2v.safetensors", tiny_weights(CONFIG, seed=4), "fp8")
    plain = load_dit(path, dtype=torch.float32)
    reference = run(plain)
    sizes, rest = block_bytes(plain)
    model = load_dit(path, dtype=torch.float32, vram_budget_gb=(rest + 1.5 * max(sizes)) / GIB)
    plan = streamer_of(model).plan
    assert plan.streams and plan.resident == () and plan.prefetch == 0
    assert model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    assert torch.equal(run(model), reference)
    assert torch.equal(run(model), reference)


def test_lora_side_branches_attached_after_streaming_starts_stream_too():
    base = tiny_model()
    loras = stack(base, size=0.1)
    plain = tiny_model()
    attach_loras(plain, loras)
    model = tiny_model()
    streamer = stream_blocks(model, budget_for(model, 0, 0), "cpu", prefetch=0)
    assert streamer.plan.streamed == tuple(range(5))
    run(model)
    attach_loras(model, loras)  # new branch tensors while the blocks sit on their host copies
    assert torch.equal(run(model), run(plain))
    residency = ModelResidency.of(model)
    assert sum(slot.name in ("down", "up") for group in residency.blocks for slot in group.slots.values()) > 0


def test_in_place_edit_of_a_device_copy_survives_the_drop():
    model = tiny_model()
    stream_blocks(model, budget_for(model, 0, 0), "cpu", prefetch=0)
    run(model)
    block = model.blocks[0]
    ModelResidency.of(model).blocks[0].ready("cpu")
    with torch.no_grad():
        block.ffn[0].bias.add_(1.0)  # on the device copy
    edited = block.ffn[0].bias.clone()
    run(model)  # block 0 is dropped after it runs, then loaded again next time
    ModelResidency.of(model).blocks[0].ready("cpu")
    assert torch.equal(block.ffn[0].bias, edited)


def write_pair(tmp_path):
    folder = tmp_path / "Wan2.2-T2V-A14B-tiny"
    write_official_folder(folder / "high_noise_model", CONFIG, seed=1)
    write_official_folder(folder / "low_noise_model", CONFIG, seed=2)
    return folder


def test_pair_under_one_budget_drops_the_idle_expert_and_prefetches_the_next(tmp_path):
    folder = write_pair(tmp_path)
    reference = sample(load_dit(folder, dtype=torch.float32), t2v_conditioning(), schedule=DistillSchedule(),
                       seed=3)
    high, low = load_dit(folder, dtype=torch.float32)
    expert_bytes = ModelResidency.of(high).nbytes
    sizes, rest = block_bytes(high)
    budget = expert_bytes + rest + 2 * max(sizes)  # one expert, plus room for the next one's first tensors
    pool, traces = WeightPool(budget), {"high": [], "low": []}
    for name, expert in (("high", high), ("low", low)):
        stream_blocks(expert, budget, "cpu", pool=pool, trace=traces[name])
    low_trace_at_high_calls = []
    high.register_forward_pre_hook(lambda module, args: low_trace_at_high_calls.append(list(traces["low"])))
    got = sample((high, low), t2v_conditioning(), schedule=DistillSchedule(), seed=3, device="cpu")
    assert torch.equal(got, reference)
    assert not streamer_of(high).plan.streams
    # nothing of the low expert before the high one's first call; before its last call (step 2 of 4) the low
    # expert's first tensors, as many as fit next to the high expert, started loading
    assert low_trace_at_high_calls == [[], [("prefetch", "rest"), ("prefetch", "blocks.0"), ("prefetch", "blocks.1")]]
    assert ModelResidency.of(high).device_bytes() == 0  # dropped when the low expert started
    assert ModelResidency.of(low).device_bytes() == expert_bytes


def test_pair_that_fits_twice_keeps_both_experts(tmp_path):
    high, low = load_dit(write_pair(tmp_path), dtype=torch.float32, vram_budget_gb=1.0)
    sample((high, low), t2v_conditioning(), schedule=DistillSchedule(), seed=3, device="cpu")
    assert ModelResidency.of(high).device_bytes() == ModelResidency.of(high).nbytes
    assert ModelResidency.of(low).device_bytes() == ModelResidency.of(low).nbytes
    assert streamer_of(high).pool is streamer_of(low).pool


def test_budget_must_be_positive(tmp_path):
    with pytest.raises(InvalidInputError, match="vram_budget_gb must be positive"):
        load_dit(write_pair(tmp_path), dtype=torch.float32, vram_budget_gb=0)


def test_gib_is_binary():
    assert GIB == 2 ** 30


class RecordingHook:
    """An expert hook with the look-ahead method: records what the sampler asks for, in order."""

    def __init__(self, log):
        self.log = log

    def __call__(self, active, idle):
        self.log.append(("switch", active))

    def prefetch(self, upcoming):
        self.log.append(("prefetch", upcoming))


def test_look_ahead_asks_the_hook_for_the_next_expert_before_the_last_step_ahead_of_the_switch():
    high, low = tiny_model(seed=1), tiny_model(seed=2)
    log = []
    for expert in (high, low):
        expert.register_forward_pre_hook(lambda module, args: log.append(("call", module)))
    sample((high, low), t2v_conditioning(), schedule=DistillSchedule(), seed=0, expert_hook=RecordingHook(log))
    assert log == [("switch", high), ("call", high), ("prefetch", low), ("call", high), ("switch", low),
                   ("call", low), ("call", low)]
