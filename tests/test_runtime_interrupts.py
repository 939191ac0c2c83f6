"""Interrupts at every point a run can stop: per tensor while a DiT loads, before every model call and every DiT
block while sampling, per chunk in VAE encode / decode, and per tensor while an export writes.

Each case injects the interrupt through the check the code exposes (returning True, or raising as ComfyUI's
``throw_exception_if_processing_interrupted`` does), then checks what is left: no file, no hook, the aborted run's
tensors dropped (a weak reference to them dies although the exception is still held), and the next run bit for bit
equal to an uninterrupted one.
"""

import gc
import weakref

import pytest
import torch

from wan_express.errors import Interrupted, SamplingInterrupted
from wan_express.loaders import load_dit
from wan_express.loaders.export.writer import write_dit
from wan_express.models.vae2_1 import VaeConfig, WanVAE21
from wan_express.sampling import Conditioning, DistillSchedule, sample
from wan_express.synthetic import TINY_CONFIG, random_weights_, write_official_folder

LATENT = (16, 2, 4, 4)


class HostInterrupt(Exception):
    """What a host's check raises (ComfyUI: ``InterruptProcessingException``)."""


class StopAt:
    """An interrupt check that asks to stop on its ``stop_at``-th call (1-based): returns True, or raises ``raises``."""

    def __init__(self, stop_at: int, raises: type[BaseException] | None = None):
        self.stop_at, self.raises, self.calls = stop_at, raises, 0

    def __call__(self) -> bool:
        self.calls += 1
        if self.calls == self.stop_at:
            if self.raises is not None:
                raise self.raises("cancelled")
            return True
        return False


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit") / "Wan2.1-T2V-tiny"
    write_official_folder(path, TINY_CONFIG, seed=3)
    return path


@pytest.fixture(scope="module")
def model(folder):
    return load_dit(folder, dtype=torch.float32)


def conditioning():
    text = torch.randn(1, 7, TINY_CONFIG.text_dim, generator=torch.Generator().manual_seed(1))
    return Conditioning(text, LATENT)


def run(model, **kwargs):
    return sample(model, conditioning(), schedule=DistillSchedule(), seed=5, **kwargs)


def test_an_interrupted_load_keeps_nothing_and_the_next_load_is_identical(folder, model):
    with pytest.raises(Interrupted, match="interrupted before tensor"):
        load_dit(folder, dtype=torch.float32, interrupt=StopAt(7))
    with pytest.raises(HostInterrupt):
        load_dit(folder, dtype=torch.float32, quantization="fp8", interrupt=StopAt(3, HostInterrupt))
    again = load_dit(folder, dtype=torch.float32, interrupt=StopAt(0))
    for key, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key
    assert torch.equal(run(again), run(model))


# checks per step: before the model call, then before each of the 2 blocks
@pytest.mark.parametrize("stop_at, where", [(1, "call of step 1/4"), (4, "call of step 2/4"), (10, "call of step 4/4"),
                                            (2, "DiT block 0"), (6, "DiT block 1")])
def test_an_interrupted_run_leaves_the_model_as_it_was(model, stop_at, where):
    reference = run(model)
    seen = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(weakref.ref(args[0])))
    try:
        with pytest.raises(SamplingInterrupted, match=where) as caught:
            run(model, interrupt=StopAt(stop_at))
    finally:
        handle.remove()
    gc.collect()
    assert caught.value is not None and all(ref() is None for ref in seen)  # the aborted latents are gone
    assert all(not block._forward_pre_hooks for block in model.blocks)
    assert torch.equal(run(model), reference)
    assert torch.equal(run(model, interrupt=StopAt(0)), reference)


def test_the_hosts_exception_goes_through_unchanged(model):
    with pytest.raises(HostInterrupt):
        run(model, interrupt=StopAt(5, HostInterrupt))
    assert all(not block._forward_pre_hooks for block in model.blocks)


def test_an_interrupted_vae_encode_and_decode_leave_the_next_pass_whole():
    vae = WanVAE21(VaeConfig("2.1", 8, 8, 16))
    random_weights_(vae, seed=5)
    vae.eval()
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    latent = vae.encode(video)
    with pytest.raises(SamplingInterrupted, match="encode interrupted before chunk 2/2"):
        vae.encode(video, interrupt=StopAt(2))
    assert torch.equal(vae.encode(video), latent)
    pixels = vae.decode(latent, tiled=False)
    with pytest.raises(SamplingInterrupted, match="decode interrupted before chunk 2/2"):
        vae.decode(latent, tiled=False, interrupt=StopAt(2))
    with pytest.raises(HostInterrupt):
        vae.decode(latent, tiled=True, tile=1, overlap=0, interrupt=StopAt(3, HostInterrupt))
    assert torch.equal(vae.decode(latent, tiled=False), pixels)


def test_an_interrupted_export_leaves_no_file_and_the_next_is_identical(model, tmp_path):
    tensors = model.state_dict()
    reference = tmp_path / "reference" / "out.safetensors"
    reference.parent.mkdir()
    write_dit(reference, tensors, "lightx2v-fp8", {"source": "test"})
    out = tmp_path / "out.safetensors"
    for stop_at in (1, 5, len(tensors)):  # the progress callback raises as ComfyUI's progress bar check does
        check = StopAt(stop_at, HostInterrupt)
        with pytest.raises(HostInterrupt):
            write_dit(out, tensors, "lightx2v-fp8", {"source": "test"}, progress=lambda done, total: check())
        assert sorted(p.name for p in tmp_path.iterdir()) == ["reference"]
    write_dit(out, tensors, "lightx2v-fp8", {"source": "test"})
    assert out.read_bytes() == reference.read_bytes()
