"""VAE encode and decode report progress chunk by chunk and stop at an interrupt, without changing their results;
the VAE Encode / Decode nodes drive them (tiling choice, frame-count errors) outside ComfyUI.

Outputs with and without callbacks are compared bit for bit (torch.equal): the callbacks only count.
"""

import pytest
import torch

from wan_express.errors import InvalidInputError, SamplingInterrupted
from wan_express.models.latent_spaces import to_normalized, to_raw
from wan_express.models.vae2_1 import VaeConfig, WanVAE21
from wan_express.models.vae2_2 import WanVAE22
from wan_express.nodes.component_nodes import WanExpressVAEDecode, WanExpressVAEEncode
from wan_express.synthetic import random_weights_


class Recorder:
    """A progress callback keeping every (done, total) it is given."""

    def __init__(self):
        self.calls = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))


class StopAt:
    """An interrupt check that raises on its ``stop_at``-th call (1-based), as ComfyUI's check raises."""

    def __init__(self, stop_at: int):
        self.stop_at, self.calls = stop_at, 0

    def __call__(self) -> bool:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt("user cancelled")
        return False


@pytest.fixture(scope="module", params=["2.1", "2.2"])
def vae(request):
    version = request.param
    model = (WanVAE21(VaeConfig("2.1", 8, 8, 16)) if version == "2.1" else WanVAE22(VaeConfig("2.2", 8, 8, 48)))
    random_weights_(model, seed=5)
    return model.eval()


def video(frames: int, height: int = 16, width: int = 16) -> torch.Tensor:
    return torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(2)) * 2 - 1


def latent_of(vae, frames: int = 3, height: int = 2, width: int = 3) -> torch.Tensor:
    return torch.randn(1, vae.z_dim, frames, height, width, generator=torch.Generator().manual_seed(4))


def test_encode_reports_every_chunk_and_keeps_its_result(vae):
    clip = video(9)  # chunks: frame 0, frames 1-4, frames 5-8
    progress = Recorder()
    checks = []
    with_callbacks = vae.encode(clip, progress=progress, interrupt=lambda: checks.append(1) or False)
    assert progress.calls == [(1, 3), (2, 3), (3, 3)] and len(checks) == 3
    assert torch.equal(with_callbacks, vae.encode(clip))


def test_decode_reports_every_latent_frame_and_keeps_its_result(vae):
    latent = latent_of(vae, frames=3)
    progress = Recorder()
    with_callbacks = vae.decode(latent, tiled=False, progress=progress, interrupt=lambda: False)
    assert progress.calls == [(1, 3), (2, 3), (3, 3)]
    assert torch.equal(with_callbacks, vae.decode(latent, tiled=False))


def test_tiled_decode_reports_every_chunk_of_every_tile_and_keeps_its_result(vae):
    latent = latent_of(vae, frames=2, height=3, width=4)
    progress = Recorder()
    tiled = vae.decode(latent, tiled=True, tile=2, overlap=1, progress=progress)  # 2 x 3 tiles, 2 chunks each
    assert progress.calls == [(done, 12) for done in range(1, 13)]
    assert torch.equal(tiled, vae.decode(latent, tiled=True, tile=2, overlap=1))


@pytest.mark.parametrize("stop_at", [1, 2, 3])
def test_an_interrupt_stops_before_its_chunk_and_the_next_run_is_whole(vae, stop_at):
    latent = latent_of(vae, frames=3)
    progress = Recorder()
    with pytest.raises(KeyboardInterrupt, match="user cancelled"):
        vae.decode(latent, tiled=False, progress=progress, interrupt=StopAt(stop_at))
    assert progress.calls == [(done, 3) for done in range(1, stop_at)]  # the chunks before it ran, no more
    assert torch.equal(vae.decode(latent, tiled=False, interrupt=lambda: False), vae.decode(latent, tiled=False))
    clip = video(9)
    with pytest.raises(KeyboardInterrupt):
        vae.encode(clip, interrupt=StopAt(stop_at))
    assert torch.equal(vae.encode(clip, interrupt=lambda: False), vae.encode(clip))


def test_a_check_returning_true_stops_with_the_packs_error(vae):
    with pytest.raises(SamplingInterrupted, match="VAE decode interrupted before chunk 1/3"):
        vae.decode(latent_of(vae, frames=3), tiled=False, interrupt=lambda: True)
    with pytest.raises(SamplingInterrupted, match="VAE encode interrupted before chunk 1/2"):
        vae.encode(video(5), interrupt=lambda: True)


def test_encode_node_turns_core_images_into_a_raw_latent(vae):
    clip = video(5)
    images = ((clip[0].permute(1, 2, 3, 0) + 1) / 2)  # core IMAGE [N, H, W, 3] in [0, 1]
    (latent,) = WanExpressVAEEncode().encode(vae, images)
    expected = vae.encode(images.permute(3, 0, 1, 2)[None] * 2 - 1)
    stride = vae.stride[1]
    assert latent["samples"].shape == (1, vae.z_dim, 2, 16 // stride, 16 // stride)
    torch.testing.assert_close(to_normalized(latent["samples"]), expected, rtol=0, atol=1e-5)  # mean/std round trip


@pytest.mark.parametrize("frames, nearest", [(4, "1 or 5"), (8, "5 or 9")])
def test_encode_node_names_the_valid_frame_counts(vae, frames, nearest):
    with pytest.raises(InvalidInputError, match=f"1 \\+ 4k frames .*got {frames} frames. Use {nearest} frames"):
        WanExpressVAEEncode().encode(vae, torch.rand(frames, 16, 16, 3))


def test_decode_node_tiles_as_asked_with_the_tile_in_pixels(vae):
    latent = latent_of(vae, frames=1, height=2, width=20)  # wider than a 128-pixel tile of either VAE
    stride = vae.stride[1]
    tile_px = 128
    expected = {"on": vae.decode(latent, tiled=True, tile=tile_px // stride),
                "off": vae.decode(latent, tiled=False), "auto": vae.decode(latent)}
    assert not torch.equal(expected["on"], expected["off"]) and torch.equal(expected["auto"], expected["off"])
    for mode, decoded in expected.items():
        (frames,) = WanExpressVAEDecode().decode(vae, {"samples": to_raw(latent)}, tiled=mode, tile=tile_px)
        want = ((decoded[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
        # the node's raw -> normalised round trip moves values by float rounding only
        torch.testing.assert_close(frames, want, rtol=0, atol=1e-5)
