"""The demo's video writers: an animated WebP through Pillow (always), an H.264 .mp4 through PyAV (where installed),
and the choice of file. Frames are compared after the codecs: WebP lossless exactly, H.264 within a mean error."""

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from wan_express.demo import FPS, to_uint8_frames, video_path, write_video
from wan_express.errors import InvalidInputError

HAS_AV = importlib.util.find_spec("av") is not None


def moving_frames(count: int = 9, height: int = 64, width: int = 96) -> torch.Tensor:
    """[F, H, W, 3] uint8: a smooth gradient drifting one step per frame (codec-friendly, every frame different)."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    frames = [torch.stack([(x * 2 + 8 * t) % 256, (y * 3 + 4 * t) % 256, (x + y + 16 * t) % 256], dim=-1)
              for t in range(count)]
    return torch.stack(frames).to(torch.uint8)


def test_decoded_video_becomes_uint8_frames():
    video = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 4, 1, 1).expand(1, 3, 4, 2, 2)
    frames = to_uint8_frames(video)
    assert frames.shape == (4, 2, 2, 3) and frames.dtype == torch.uint8
    assert frames[:, 0, 0, 0].tolist() == [0, 128, 255, 255]


def test_webp_holds_every_frame_at_16_fps(tmp_path):
    frames = moving_frames()
    path = write_video(frames, tmp_path / "clip.webp")
    with Image.open(path) as image:
        assert image.format == "WEBP" and image.n_frames == 9 and image.size == (96, 64)
        assert image.info["loop"] == 0
        for index in (0, 4, 8):
            image.seek(index)
            assert torch.equal(torch.from_numpy(np.array(image.convert("RGB"))), frames[index])
            assert image.info["duration"] == round(1000 / FPS)


@pytest.mark.skipif(not HAS_AV, reason="PyAV (av) is not installed")
def test_mp4_is_h264_yuv420p_at_16_fps_with_every_frame(tmp_path):
    import av

    frames = moving_frames()
    path = write_video(frames, tmp_path / "clip.mp4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == FPS
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert stream.format.name == "yuv420p" and len(decoded) == 9
    error = (torch.from_numpy(decoded[4]).float() - frames[4].float()).abs().mean()
    assert error <= 8  # lossy H.264 with 4:2:0 chroma on a smooth gradient: measured about 1-3 levels


def test_the_file_is_chosen_by_what_is_installed_or_named(tmp_path):
    default = "demo.mp4" if HAS_AV else "demo.webp"
    assert video_path(None).name == default and video_path(None).parent == video_path(".").parent
    assert video_path(tmp_path) == tmp_path / default
    assert video_path(tmp_path / "fox.webp") == tmp_path / "fox.webp"
    with pytest.raises(InvalidInputError, match=r"\.mp4 or \.webp"):
        video_path(tmp_path / "fox.gif")


@pytest.mark.skipif(HAS_AV, reason="PyAV is installed")
def test_mp4_without_pyav_says_what_to_install(tmp_path):
    with pytest.raises(InvalidInputError, match="pip install av"):
        write_video(moving_frames(1), tmp_path / "clip.mp4")
