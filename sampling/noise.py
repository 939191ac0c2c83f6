"""Initial noise for a seed (spec sampling.md §8).

Entry point: `initial_noise(shape, seed, source, device)`. "cpu" (default) draws `[1, C, T, H, W]` from a CPU
generator like ComfyUI's `prepare_noise`, so a seed gives the same video on any GPU; "lightx2v" draws
`randn([C, T, H, W], float32)` from a CUDA generator as the official code and LightX2V do, for bit parity with
their runs.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError

NOISE_SOURCES = ("cpu", "lightx2v")


def initial_noise(shape: tuple[int, int, int, int], seed: int, source: str = "cpu",
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise for a latent of `shape` = (C, T, H, W).

    Returns:
        [1, C, T, H, W] float32 on `device`.
    """
    if source == "cpu":
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randn((1, *shape), generator=generator, dtype=torch.float32).to(device)
    if source == "lightx2v":
        device = torch.device(device)
        if device.type != "cuda":
            raise InvalidInputError(
                f"noise source 'lightx2v' draws on a CUDA generator, but the sampler runs on {device}; "
                "use noise source 'cpu' there")
        generator = torch.Generator(device=device).manual_seed(seed)
        return torch.randn(shape, generator=generator, dtype=torch.float32, device=device)[None]
    raise InvalidInputError(f"unknown noise source {source!r}; choose one of {', '.join(NOISE_SOURCES)}")
