"""Building blocks shared by the Wan2.1 and Wan2.2 VAEs, with the official parameter names.

Every temporal layer reads and writes a `FrameCache`, which carries the last frames of the previous chunk so
that chunked execution equals one causal pass over the whole clip (spec networks.md §4.2, §4.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrameCache:
    """What each temporal layer remembers from the previous chunk of one encode or decode call.

    Layers are keys; a new cache (a fresh call) starts empty, which is how the official code's ``clear_cache``
    behaves. ``chunk_index`` is advanced by the chunk loop; Wan2.2's duplicate shortcut needs to know chunk 0.
    """

    def __init__(self):
        self._tails: dict[nn.Module, torch.Tensor | None] = {}
        self.chunk_index = 0

    def first_visit(self, layer: nn.Module) -> bool:
        """True the first time ``layer`` asks (and records that it has been seen)."""
        if layer in self._tails:
            return False
        self._tails[layer] = None
        return True

    def exchange(self, layer: nn.Module, frames: torch.Tensor, keep: int) -> torch.Tensor | None:
        """Return the frames kept for ``layer`` from the previous chunk and keep the last ``keep`` of this one.

        frames: [B, C, T, H, W]. When this chunk is shorter than ``keep``, the kept tail reaches back into the
        previous tail, so a 1-frame chunk keeps [last previous frame, this frame] as the official cache does.
        """
        previous = self._tails.get(layer)
        if frames.shape[2] >= keep or previous is None:
            tail = frames[:, :, -keep:].clone()
        else:
            tail = torch.cat([previous, frames], dim=2)[:, :, -keep:]
        self._tails[layer] = tail
        return previous


class CausalConv3d(nn.Conv3d):
    """Conv3d that pads time at the front only (2·pt frames) and space symmetrically.

    Spatial zero padding is left to the convolution itself (no padded copy of a large activation); the
    front padding is replaced by the previous chunk's frames when a cache is given, so chunks add up to one
    causal convolution over the whole clip with 2·pt zero frames in front.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        pad = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        super().__init__(in_channels, out_channels, kernel, stride=stride, padding=(0, pad[1], pad[2]))
        self.front_frames = 2 * pad[0]

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: [B, Cin, T, H, W] -> [B, Cout, T', H', W']."""
        if self.front_frames == 0:
            return super().forward(x)
        previous = cache.exchange(self, x, self.front_frames) if cache is not None else None
        parts = [x] if previous is None else [previous, x]
        missing = self.front_frames - (0 if previous is None else previous.shape[2])
        if missing > 0:
            parts.insert(0, x.new_zeros(x.shape[0], x.shape[1], missing, x.shape[3], x.shape[4]))
        return super().forward(torch.cat(parts, dim=2))


class RMSNorm(nn.Module):
    """``x / max(‖x‖₂ over channels, 1e-12) · sqrt(C) · gamma``; gamma [C,1,1,1] (video) or [C,1,1] (image)."""

    def __init__(self, channels: int, *, images: bool):
        super().__init__()
        self.scale = channels ** 0.5
        self.gamma = nn.Parameter(torch.empty(channels, *((1, 1) if images else (1, 1, 1))))
        nn.init.ones_(self.gamma)  # an init call, which `skeleton` skips on the meta device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1).mul_(self.gamma * self.scale)


# Layers that take no cache argument.
_STATELESS = (RMSNorm, nn.SiLU, nn.Identity)


class ResidualBlock(nn.Module):
    """RMS → SiLU → conv 3³ → RMS → SiLU → conv 3³, plus a 1×1×1 conv shortcut when the width changes.

    Sequential indices follow the official keys (``residual.0/2/3/6``); index 5 held the training dropout.
    The activations run in place: they always act on a norm's fresh output, which saves a full-size buffer.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False), nn.SiLU(inplace=True), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False), nn.SiLU(inplace=True), nn.Identity(),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        """x: [B, in_dim, T, H, W] -> [B, out_dim, T, H, W]."""
        return run_sequence(self.residual, x, cache) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the positions of each frame (no temporal mixing), residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        """x: [B, C, T, H, W] -> same shape."""
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).reshape(b * t, 3, c, h * w).transpose(2, 3)
        attended = F.scaled_dot_product_attention(qkv[:, 0:1], qkv[:, 1:2], qkv[:, 2:3])
        out = self.proj(attended[:, 0].transpose(1, 2).reshape(b * t, c, h, w))
        return x + out.reshape(b, t, c, h, w).transpose(1, 2)


class Upsample2x(nn.Module):
    """Nearest ×2 per frame; at an exact factor of 2 "nearest-exact" copies values, so any dtype is exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest-exact")


class Resample(nn.Module):
    """Spatial ×2 up/down per frame, optionally with the temporal ×2 step (keys ``resample.1``, ``time_conv``).

    Modes: ``upsample2d``, ``upsample3d`` (conv ``dim -> out_dim``), ``downsample2d``, ``downsample3d``.
    Temporal rules (spec §4.4): upsample3d skips its time conv on the first chunk and then runs as a causal
    conv that never sees that chunk; downsample3d skips it on the first chunk and then convolves
    [last frame of the previous chunk, this chunk] with stride 2.
    """

    def __init__(self, dim: int, mode: str, out_dim: int | None = None):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, out_dim or dim, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        """x: [B, C, T, H, W] -> [B, C', T', 2H, 2W] (up) or [B, C, T', ceil(H/2), ceil(W/2)] (down)."""
        if self.mode == "upsample3d" and not cache.first_visit(self):
            b, c, t, h, w = x.shape
            doubled = self.time_conv(x, cache)
            # channels [0:C] give frame 2i, channels [C:2C] frame 2i+1
            x = doubled.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, t * 2, h, w)
        x = self._per_frame(x)
        if self.mode == "downsample3d":
            previous = cache.exchange(self, x, 1)
            if previous is not None:
                x = self.time_conv(torch.cat([previous, x], dim=2))
        return x

    def _per_frame(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        return frames.reshape(b, t, *frames.shape[1:]).transpose(1, 2)


def run_sequence(layers: nn.Sequential, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
    """Apply layers in order, handing the cache to those that keep temporal state (all but norms/activations)."""
    for layer in layers:
        x = layer(x) if isinstance(layer, _STATELESS) else layer(x, cache)
    return x
