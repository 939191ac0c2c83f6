"""A CUDA out-of-memory while a DiT loads or a sampler runs becomes `OutOfGpuMemoryError`, whose message names the
remedies; the cached model stays usable (the next run is bit for bit the uninterrupted one) and the aborted run's
tensors are dropped. The OOM is torch's own exception, raised on CPU from a torch function mode (every ``Tensor.to``
the load makes) or from a block's forward hook."""

import gc
import traceback
import weakref

import pytest
import torch
from torch.overrides import TorchFunctionMode

from wan_express.errors import OutOfGpuMemoryError
from wan_express.loaders import load_dit
from wan_express.sampling import Conditioning, DistillSchedule, sample
from wan_express.synthetic import TINY_CONFIG

from .test_runtime_interrupts import folder, model  # noqa: F401  (the same tiny official folder and its model)

LATENT = (16, 2, 4, 4)
REMEDIES = ("fp8 or int8", "VRAM budget", "fewer frames", "smaller width x height")


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class OomOnTo(TorchFunctionMode):
    """Raises torch's out-of-memory on the ``at``-th ``Tensor.to`` call, as a full GPU does on a copy."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            self.calls += 1
            if self.calls == self.at:
                raise oom()
        return func(*args, **(kwargs or {}))




def run(model):
    text = torch.randn(1, 7, TINY_CONFIG.text_dim, generator=torch.Generator().manual_seed(1))
    return sample(model, Conditioning(text, LATENT), schedule=DistillSchedule(), seed=5)


def test_out_of_memory_while_loading_names_the_remedies(folder, model):
    with pytest.raises(OutOfGpuMemoryError, match="while loading the DiT") as caught, OomOnTo(5):
        load_dit(folder, dtype=torch.float32)
    message = str(caught.value)
    assert all(remedy in message for remedy in REMEDIES) and "Tried to allocate 2.00 GiB" in message
    assert caught.value.__context__ is None  # the OOM and the frames it held are gone
    again = load_dit(folder, dtype=torch.float32)
    assert all(torch.equal(tensor, model.state_dict()[key]) for key, tensor in again.state_dict().items())


def test_out_of_memory_while_sampling_leaves_the_model_usable(model):
    reference = run(model)
    calls, seen = [], []

    def full_gpu(module, args):
        calls.append(1)
        seen.append(weakref.ref(args[0]))
        if len(calls) == 3:  # the second block of step 2
            raise oom()

    handle = model.blocks[1].register_forward_pre_hook(full_gpu)
    try:
        with pytest.raises(OutOfGpuMemoryError, match="while sampling") as caught:
            run(model)
    finally:
        handle.remove()
    gc.collect()
    assert all(remedy in str(caught.value) for remedy in REMEDIES)
    assert all(ref() is None for ref in seen)
    assert torch.equal(run(model), reference)


def test_the_sampler_node_shows_the_out_of_memory_as_its_sentence(model):
    """Outside ComfyUI the node runs the library directly; its error carries no frames from deep inside."""
    from wan_express.nodes import NODE_CLASS_MAPPINGS

    def full_gpu(module, args):
        raise oom()

    context = torch.randn(1, 7, TINY_CONFIG.text_dim, generator=torch.Generator().manual_seed(1))
    handle = model.blocks[0].register_forward_pre_hook(full_gpu)
    try:
        with pytest.raises(OutOfGpuMemoryError, match="while sampling") as caught:
            NODE_CLASS_MAPPINGS["WanExpressSampler"]().generate(
                model, [[context, {}]], 32, 32, 5, 0, "distill", "1000,750,500,250", 40, 5.0, 1.0, "cpu", True)
    finally:
        handle.remove()
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert [frame.name for frame in frames][1:] == ["run"], frames  # below the test: the node wrapper alone
