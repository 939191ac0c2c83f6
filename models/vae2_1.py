"""The Wan2.1 VAE (z 16, stride 4×8×8) and the chunked, cached, optionally tiled runner both Wan VAEs share.

`WanVAE` holds what the two versions have in common: frame-count rules, the chunk loops of spec networks.md
§4.4, latent normalisation and spatially tiled decoding. `WanVAE21` adds the Wan2.1 encoder and decoder. Encode and
decode report progress after every chunk and ask an interrupt check before each (`ChunkSteps`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import InvalidInputError, SamplingInterrupted
from ..numerics import check_pixels
from .vae_layers import AttentionBlock, CausalConv3d, FrameCache, Resample, ResidualBlock, RMSNorm, run_sequence

log = logging.getLogger(__name__)

# Fixed by both released architectures (spec §4.1, §5.1): stage width multipliers and which encoder stages
# also halve time; the decoder doubles time in the mirrored stages.
DIM_MULT = (1, 2, 4, 4)
TEMPORAL_DOWN = (False, True, True)
TEMPORAL_UP = TEMPORAL_DOWN[::-1]

LATENT_FORMATS = ("normalized", "comfy")
# Frames larger than this many pixels decode tiled unless the caller says otherwise (480p decodes whole).
# Measured peak GPU memory of a Wan2.1 decode of 81 frames in bf16 (H100, bench/vae_decode_memory.py):
# 480p whole 4.6 GiB, 720p whole 10.3 GiB, 720p in default tiles 4.0 GiB, 720p in 32-latent tiles 1.9 GiB;
# so the default keeps decodes up to 720p/81f within about 5 GiB.
AUTO_TILE_PIXELS = 832 * 480


@dataclass(frozen=True)
class VaeConfig:
    """Widths of a Wan VAE; everything else is fixed by the version.

    version: "2.1" (16-channel latent, stride 4×8×8) or "2.2" (48 channels, 4×16×16).
    dim: encoder base width (released: 96 for 2.1, 160 for 2.2).
    dec_dim: decoder base width (released: 96 for 2.1, 256 for 2.2).
    z_dim: latent channels (16 or 48; the normalisation statistics exist for these only).
    """

    version: str
    dim: int
    dec_dim: int
    z_dim: int


Progress = Callable[[int, int], None]
"""``progress(done, total)`` after every chunk (every chunk of every tile when tiled); ``done`` counts from 1."""

InterruptCheck = Callable[[], bool]
"""Asked before every chunk: raising stops the run (ComfyUI's check raises its own interrupt exception); returning
True stops it with `SamplingInterrupted`, as in the sampler."""


class ChunkSteps:
    """The chunk counter of one encode or decode: `before` asks the interrupt check, `after` reports progress."""

    def __init__(self, what: str, total: int, progress: Progress | None, interrupt: InterruptCheck | None):
        self.what, self.total, self.done = what, total, 0
        self.progress, self.interrupt = progress, interrupt

    def before(self) -> None:
        if self.interrupt is not None and self.interrupt():
            raise SamplingInterrupted(f"VAE {self.what} interrupted before chunk {self.done + 1}/{self.total}")

    def after(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


WAN21_VAE = VaeConfig("2.1", dim=96, dec_dim=96, z_dim=16)

WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``length`` with at least ``overlap`` shared, spread evenly."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def blend_ramp(start: int, size: int, total: int, ramp: int) -> torch.Tensor:
    """Weights [size] of one tile along one axis: linear ramps of ``ramp`` samples on edges shared with a neighbour."""
    weights = torch.ones(size)
    if ramp == 0:
        return weights
    rising = torch.arange(1, ramp + 1, dtype=torch.float32) / (ramp + 1)
    if start > 0:
        weights[:ramp] = torch.minimum(weights[:ramp], rising[:size])
    if start + size < total:
        weights[-ramp:] = torch.minimum(weights[-ramp:], rising.flip(0)[-size:])
    return weights


class WanVAE(nn.Module):
    """A Wan video VAE run chunk by chunk with a frame cache (the official semantics), plus tiled decoding.

    Subclasses build ``encoder``, ``conv1``, ``conv2`` and ``decoder`` with the official names and set the
    class attributes below. Pixels are in [-1, 1]. ``latent_format`` chooses the latent convention of
    `encode` / `decode`: "normalized" (default) is ``(mu - mean) / std``, what the Wan DiT consumes; "comfy"
    is the raw VAE space ``mu`` that ComfyUI's LATENT carries (its model applies the same mean/std inside).
    """

    stride: tuple[int, int, int]
    latent_mean: tuple[float, ...]
    latent_std: tuple[float, ...]
    default_tile: int  # tile side in latent positions (512 pixels)
    default_overlap: int  # latent positions shared by neighbouring tiles (64 pixels)

    def __init__(self, config: VaeConfig, latent_format: str = "normalized"):
        super().__init__()
        if latent_format not in LATENT_FORMATS:
            raise InvalidInputError(f"latent_format must be one of {LATENT_FORMATS}, got {latent_format!r}")
        self.config = config
        self.z_dim = config.z_dim
        self.latent_format = latent_format

    # pixel <-> network layout; Wan2.2 folds 2×2 pixel blocks into channels
    def to_network(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def from_network(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, progress: Progress | None = None,
               interrupt: InterruptCheck | None = None) -> torch.Tensor:
        """video: [B, 3, 1+4k, H, W] in [-1, 1], H and W multiples of the stride -> latent [B, z, 1+k, H/s, W/s] fp32.

        The encoder sees frame 0 alone, then groups of 4, sharing a frame cache (spec §4.4): 1+k chunks, each
        reported to ``progress`` and preceded by ``interrupt``. The callbacks never change the result.
        """
        self._check_video(video)
        weight = self.conv1.weight
        x = self.to_network(video.to(device=weight.device, dtype=weight.dtype))
        cache = FrameCache()
        bounds = [(0, 1)] + [(1 + 4 * i, 5 + 4 * i) for i in range((x.shape[2] - 1) // 4)]
        steps = ChunkSteps("encode", len(bounds), progress, interrupt)
        pieces = []
        for index, (first, last) in enumerate(bounds):
            steps.before()
            cache.chunk_index = index
            pieces.append(self.encoder(x[:, :, first:last], cache))
            steps.after()
        mu = self.conv1(torch.cat(pieces, dim=2))[:, :self.z_dim].float()
        if self.latent_format == "comfy":
            return mu
        mean, std = self._statistics(mu.device)
        return (mu - mean) / std

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, *, tiled: bool | None = None, tile: int | tuple[int, int] | None = None,
               overlap: int | None = None, progress: Progress | None = None,
               interrupt: InterruptCheck | None = None) -> torch.Tensor:
        """latent: [B, z, n, h, w] -> video [B, 3, 1+4(n-1), h·s, w·s] fp32 in [-1, 1].

        Args:
            tiled: decode in overlapping spatial tiles blended with linear ramps (approximate at the seams:
                each tile's attention and convolutions see only that tile). None tiles frames larger than
                `AUTO_TILE_PIXELS`.
            tile: tile side(s) in latent positions (default `default_tile`, 512 pixels).
            overlap: latent positions shared by neighbouring tiles (default `default_overlap`, 64 pixels).
            progress: called after every chunk (one latent frame; of every tile when tiled) with (done, total).
            interrupt: asked before every chunk (see `InterruptCheck`). The callbacks never change the result.
        """
        self._check_latent(latent)
        mu = latent.float()
        if self.latent_format == "normalized":
            mean, std = self._statistics(latent.device)
            mu = mu * std + mean
        if tiled is None:
            tiled = self.tiles_by_default(latent.shape)
        if not tiled:
            video = self._decode_whole(mu, ChunkSteps("decode", mu.shape[2], progress, interrupt))
            return check_pixels(video).clamp_(-1, 1)
        tile_hw = (tile, tile) if isinstance(tile, int) else tuple(tile or (self.default_tile,) * 2)
        overlap = self.default_overlap if overlap is None else overlap
        if min(tile_hw) < 1 or not 0 <= overlap < min(tile_hw):
            raise InvalidInputError(f"tiled decode needs tile >= 1 and 0 <= overlap < tile, got tile {tile_hw} "
                                    f"and overlap {overlap} (latent positions)")
        return check_pixels(self._decode_tiled(mu, tile_hw, overlap, progress, interrupt)).clamp_(-1, 1)

    def tiles_by_default(self, latent_shape) -> bool:
        """Whether ``decode(tiled=None)`` tiles a latent [B, z, n, h, w]: frames above `AUTO_TILE_PIXELS`."""
        return latent_shape[-2] * self.stride[1] * latent_shape[-1] * self.stride[2] > AUTO_TILE_PIXELS

    def _decode_whole(self, mu: torch.Tensor, steps: ChunkSteps) -> torch.Tensor:
        """Raw latent [B, z, n, h, w] -> unclamped video [B, 3, 1+4(n-1), H, W] fp32, one latent frame per chunk."""
        weight = self.conv2.weight
        x = self.conv2(mu.to(device=weight.device, dtype=weight.dtype))
        b, _, n, h, w = x.shape
        video = torch.empty(b, 3, 1 + 4 * (n - 1), h * self.stride[1], w * self.stride[2], device=weight.device)
        cache, start = FrameCache(), 0
        for index in range(n):
            steps.before()
            cache.chunk_index = index
            frames = self.from_network(self.decoder(x[:, :, index:index + 1], cache))
            video[:, :, start:start + frames.shape[2]] = frames
            start += frames.shape[2]
            steps.after()
        return video

    def _decode_tiled(self, mu: torch.Tensor, tile: tuple[int, int], overlap: int, progress: Progress | None,
                      interrupt: InterruptCheck | None) -> torch.Tensor:
        _, _, n, h, w = mu.shape
        _, sh, sw = self.stride
        rows, cols = tile_starts(h, tile[0], overlap), tile_starts(w, tile[1], overlap)
        steps = ChunkSteps("decode", len(rows) * len(cols) * n, progress, interrupt)
        device = self.conv2.weight.device
        video = torch.zeros(mu.shape[0], 3, 1 + 4 * (n - 1), h * sh, w * sw, device=device)
        total_weight = torch.zeros(h * sh, w * sw, device=device)
        for top in rows:
            for left in cols:
                crop = mu[:, :, :, top:top + tile[0], left:left + tile[1]]
                rows_px, cols_px = crop.shape[3] * sh, crop.shape[4] * sw
                weights = torch.outer(blend_ramp(top * sh, rows_px, h * sh, overlap * sh),
                                      blend_ramp(left * sw, cols_px, w * sw, overlap * sw)).to(device)
                region = (slice(top * sh, top * sh + rows_px), slice(left * sw, left * sw + cols_px))
                video[:, :, :, region[0], region[1]] += self._decode_whole(crop, steps).mul_(weights)
                total_weight[region] += weights
        log.debug("tiled decode: %d x %d tiles of %s latents, overlap %d", len(rows), len(cols), tile, overlap)
        return video.div_(total_weight)

    def _statistics(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.z_dim, 1, 1, 1)
        return (torch.tensor(self.latent_mean, device=device).view(shape),
                torch.tensor(self.latent_std, device=device).view(shape))

    def _check_video(self, video: torch.Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != 3:
            raise InvalidInputError(f"the VAE encodes video [B, 3, F, H, W], got shape {tuple(video.shape)}")
        frames = video.shape[2]
        if frames < 1 or (frames - 1) % 4:
            lower = 1 + 4 * ((frames - 1) // 4) if frames > 1 else None
            nearest = f"{lower} or {lower + 4}" if lower else "1 or 5"
            raise InvalidInputError(f"the Wan VAE encodes 1 + 4k frames (1, 5, 9, ..., 81); got {frames} frames. "
                                    f"Use {nearest} frames")
        _, sh, sw = self.stride
        if video.shape[3] % sh or video.shape[4] % sw:
            raise InvalidInputError(f"the Wan {self.config.version} VAE needs height and width divisible by "
                                    f"{sh}; got {video.shape[3]}x{video.shape[4]}. Resize or crop the frames")

    def _check_latent(self, latent: torch.Tensor) -> None:
        if latent.dim() != 5 or latent.shape[1] != self.z_dim or latent.shape[2] < 1:
            raise InvalidInputError(f"the Wan {self.config.version} VAE decodes latents [B, {self.z_dim}, n>=1, h, "
                                    f"w], got shape {tuple(latent.shape)}")


class Encoder21(nn.Module):
    """Pixels [B, 3, T, H, W] -> [B, 2z, T', H/8, W/8] (mu and log_var), one chunk at a time."""

    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        dims = [dim * m for m in (1, *DIM_MULT)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            layers += [ResidualBlock(in_dim, out_dim), ResidualBlock(out_dim, out_dim)]
            if stage < len(TEMPORAL_DOWN):
                layers.append(Resample(out_dim, "downsample3d" if TEMPORAL_DOWN[stage] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        width = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(width, width), AttentionBlock(width), ResidualBlock(width, width))
        self.head = nn.Sequential(RMSNorm(width, images=False), nn.SiLU(inplace=True),
                                  CausalConv3d(width, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for part in (self.downsamples, self.middle, self.head):
            x = run_sequence(part, x, cache)
        return x


class Decoder21(nn.Module):
    """Latent [B, z, 1, h, w] (one frame per chunk) -> pixels [B, 3, 1 or 4, 8h, 8w].

    The temporal-upsampling stages halve the width in their spatial conv, so the next stage starts at half.
    """

    def __init__(self, dim: int, z_dim: int):
        super().__init__()
        dims = [dim * m for m in (DIM_MULT[-1], *DIM_MULT[::-1])]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        layers: list[nn.Module] = []
        for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            in_dim = in_dim // 2 if stage > 0 else in_dim
            layers += [ResidualBlock(in_dim, out_dim), ResidualBlock(out_dim, out_dim), ResidualBlock(out_dim, out_dim)]
            if stage < len(TEMPORAL_UP):
                mode = "upsample3d" if TEMPORAL_UP[stage] else "upsample2d"
                layers.append(Resample(out_dim, mode, out_dim=out_dim // 2))
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(RMSNorm(dims[-1], images=False), nn.SiLU(inplace=True),
                                  CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for part in (self.middle, self.upsamples, self.head):
            x = run_sequence(part, x, cache)
        return x


class WanVAE21(WanVAE):
    """The Wan2.1 VAE (also used by Wan2.2 A14B): 16-channel latent, stride 4×8×8, official keys (194)."""

    stride = (4, 8, 8)
    latent_mean = WAN21_MEAN
    latent_std = WAN21_STD
    default_tile = 64
    default_overlap = 8

    def __init__(self, config: VaeConfig = WAN21_VAE, latent_format: str = "normalized"):
        super().__init__(config, latent_format)
        self.encoder = Encoder21(config.dim, config.z_dim * 2)
        self.conv1 = CausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder21(config.dec_dim, config.z_dim)
