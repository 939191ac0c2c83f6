"""The Wan2.2 VAE (z 48, stride 4×16×16; TI2V-5B): 2×2 pixel patchify around an 8× network whose stages add
parameter-free average/duplicate shortcuts (spec networks.md §5). Runs through the shared `WanVAE` runner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from .vae2_1 import DIM_MULT, TEMPORAL_DOWN, TEMPORAL_UP, VaeConfig, WanVAE
from .vae_layers import AttentionBlock, CausalConv3d, FrameCache, Resample, ResidualBlock, RMSNorm, run_sequence

WAN22_VAE = VaeConfig("2.2", dim=160, dec_dim=256, z_dim=48)

WAN22_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
              0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
              -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
              -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
             0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
             0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
             0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)

PATCH = 2


def patchify(video: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, 4C, T, H/2, W/2]; channel (c·2 + column offset)·2 + row offset, as the official."""
    return rearrange(video, "b c t (h q) (w r) -> b (c r q) t h w", q=PATCH, r=PATCH)


def unpatchify(pixels: torch.Tensor) -> torch.Tensor:
    """Inverse of `patchify`: [B, 4C, T, h, w] -> [B, C, T, 2h, 2w]."""
    return rearrange(pixels, "b (c r q) t h w -> b c t (h q) (w r)", q=PATCH, r=PATCH)


def average_down(x: torch.Tensor, out_channels: int, factor_t: int, factor_s: int) -> torch.Tensor:
    """Parameter-free shortcut of an encoder stage: fold (t, h, w) blocks into channels, average channel groups.

    x: [B, C, T, H, W] -> [B, out_channels, ceil(T/ft), H/fs, W/fs]; time is zero-padded at the front to a
    multiple of ft (per chunk, as the official runs it).
    """
    if factor_t * factor_s * factor_s == 1 and x.shape[1] == out_channels:
        return x
    pad_t = -x.shape[2] % factor_t
    if pad_t:
        x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
    x = rearrange(x, "b c (t ft) (h fh) (w fw) -> b (c ft fh fw) t h w", ft=factor_t, fh=factor_s, fw=factor_s)
    return reduce(x, "b (o g) t h w -> b o t h w", "mean", o=out_channels)


def duplicate_up(x: torch.Tensor, out_channels: int, factor_t: int, factor_s: int, first_chunk: bool) -> torch.Tensor:
    """Parameter-free shortcut of a decoder stage: repeat channels, unfold them into (t, h, w) blocks.

    x: [B, C, T, H, W] -> [B, out_channels, T·ft, H·fs, W·fs]; on the first chunk the first ft-1 frames are
    dropped, matching the main path, which does not upsample time there.
    """
    repeats = out_channels * factor_t * factor_s * factor_s // x.shape[1]
    x = rearrange(x.repeat_interleave(repeats, dim=1), "b (o ft fh fw) t h w -> b o (t ft) (h fh) (w fw)",
                  ft=factor_t, fh=factor_s, fw=factor_s)
    return x[:, :, factor_t - 1:] if first_chunk else x


class DownStage(nn.Module):
    """Encoder stage (key ``downsamples``): residual blocks and an optional down-resample, plus `average_down`."""

    def __init__(self, in_dim: int, out_dim: int, temporal: bool, down: bool):
        super().__init__()
        layers: list[nn.Module] = [ResidualBlock(in_dim, out_dim), ResidualBlock(out_dim, out_dim)]
        if down:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.out_dim = out_dim
        self.factors = (2 if temporal else 1, 2 if down else 1)

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        return run_sequence(self.downsamples, x, cache) + average_down(x, self.out_dim, *self.factors)


class UpStage(nn.Module):
    """Decoder stage (key ``upsamples``): three residual blocks and an optional up-resample, plus `duplicate_up`."""

    def __init__(self, in_dim: int, out_dim: int, temporal: bool, up: bool):
        super().__init__()
        layers: list[nn.Module] = [ResidualBlock(in_dim, out_dim), ResidualBlock(out_dim, out_dim),
                                   ResidualBlock(out_dim, out_dim)]
        if up:
            layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.out_dim = out_dim
        self.factors = (2 if temporal else 1, 2) if up else None

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        main = run_sequence(self.upsamples, x, cache)
        if self.factors is None:
            return main
        return main + duplicate_up(x, self.out_dim, *self.factors, first_chunk=cache.chunk_index == 0)


class Encoder22(nn.Module):
    """Patchified pixels [B, 12, T, H/2, W/2] -> [B, 2z, T', H/16, W/16], one chunk at a time."""

    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        dims = [dim * m for m in (1, *DIM_MULT)]
        self.conv1 = CausalConv3d(3 * PATCH * PATCH, dims[0], 3, padding=1)
        self.downsamples = nn.Sequential(*(
            DownStage(in_dim, out_dim, stage < len(TEMPORAL_DOWN) and TEMPORAL_DOWN[stage],
                      down=stage < len(TEMPORAL_DOWN))
            for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:]))))
        width = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(width, width), AttentionBlock(width), ResidualBlock(width, width))
        self.head = nn.Sequential(RMSNorm(width, images=False), nn.SiLU(inplace=True),
                                  CausalConv3d(width, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for part in (self.downsamples, self.middle, self.head):
            x = run_sequence(part, x, cache)
        return x


class Decoder22(nn.Module):
    """Latent [B, z, 1, h, w] (one frame per chunk) -> patchified pixels [B, 12, 1 or 4, 8h, 8w]."""

    def __init__(self, dim: int, z_dim: int):
        super().__init__()
        dims = [dim * m for m in (DIM_MULT[-1], *DIM_MULT[::-1])]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        self.upsamples = nn.Sequential(*(
            UpStage(in_dim, out_dim, stage < len(TEMPORAL_UP) and TEMPORAL_UP[stage], up=stage < len(TEMPORAL_UP))
            for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:]))))
        self.head = nn.Sequential(RMSNorm(dims[-1], images=False), nn.SiLU(inplace=True),
                                  CausalConv3d(dims[-1], 3 * PATCH * PATCH, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for part in (self.middle, self.upsamples, self.head):
            x = run_sequence(part, x, cache)
        return x


class WanVAE22(WanVAE):
    """The Wan2.2 VAE: 48-channel latent, stride 4×16×16, official keys (196)."""

    stride = (4, 16, 16)
    latent_mean = WAN22_MEAN
    latent_std = WAN22_STD
    default_tile = 32
    default_overlap = 4

    def __init__(self, config: VaeConfig = WAN22_VAE, latent_format: str = "normalized"):
        super().__init__(config, latent_format)
        self.encoder = Encoder22(config.dim, config.z_dim * 2)
        self.conv1 = CausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder22(config.dec_dim, config.z_dim)

    def to_network(self, video: torch.Tensor) -> torch.Tensor:
        return patchify(video)

    def from_network(self, pixels: torch.Tensor) -> torch.Tensor:
        return unpatchify(pixels)
