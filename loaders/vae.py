"""Load a Wan2.1 or Wan2.2 VAE from the official ``.pth`` or its ComfyUI ``.safetensors`` twin.

Entry point: `load_vae(path)`. Both files use the official key names (spec formats.md §8.3); they differ in
container and disk dtype (the ComfyUI twins are half precision), so `open_tensors` reads either and everything
after it is shared. The version and widths are inferred from tensor shapes, which also lets tiny
test models load.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Mapping

import torch

from ..errors import ModelFormatError, UnsupportedModelError
from ..models.latent_spaces import latent_space_of_vae
from ..models.checkpoint_checks import check_dtypes
from ..models.skeleton import skeleton
from ..models.vae2_1 import VaeConfig, WanVAE
from ..models.weights import assign_weights, check_shapes, tensor_shapes
from .files import TensorView, open_tensors
from .files.boundary import boundary, shown

log = logging.getLogger(__name__)


WAN_VAE_MARKER = "decoder.middle.0.residual.0.gamma"
# version -> (key only that version has, channels into the encoder / out of the decoder); the network class and
# latent width of each version come from its latent space.
VERSIONS: dict[str, tuple[str, int]] = {
    "2.2": ("decoder.upsamples.0.upsamples.0.residual.2.weight", 12),
    "2.1": ("decoder.upsamples.0.residual.2.weight", 3),
}
# Tensors the widths are read from, and their rank (Wan VAE convs are 3-D: [out, in, t, h, w]; norms [C, 1, 1, 1]).
_INFERRED_FROM = {"encoder.conv1.weight": 5, "decoder.head.0.gamma": 4, "decoder.head.2.weight": 5,
                  "conv2.weight": 5}


def read_vae_tensors(path: str | Path) -> TensorView:
    """The tensors of a VAE file (``.pth``/``.pt`` or ``.safetensors``), read lazily through `open_tensors`."""
    return open_tensors(path, name=shown(path), what="VAE file")


def detect_vae_config(shapes: Mapping[str, tuple[int, ...]], source: str) -> VaeConfig:
    """Version and widths of a Wan VAE from its tensor shapes (spec formats.md §8.3)."""
    if WAN_VAE_MARKER not in shapes:
        raise ModelFormatError(f"{source}: not a Wan VAE (no {WAN_VAE_MARKER!r}); load a Wan2.1 or Wan2.2 VAE file")
    version = next((name for name, (marker, _) in VERSIONS.items() if marker in shapes), None)
    if version is None:
        raise ModelFormatError(f"{source}: a Wan VAE without the decoder stage keys of Wan2.1 or Wan2.2 "
                               f"({', '.join(marker for marker, _ in VERSIONS.values())})")
    for key, rank in _INFERRED_FROM.items():
        if key not in shapes:
            raise ModelFormatError(f"{source}: Wan{version} VAE tensor {key!r} is missing; the file is incomplete")
        shape = tuple(shapes[key])
        if len(shape) != rank or not all(size > 0 for size in shape):
            raise ModelFormatError(f"{source}: Wan{version} VAE tensor {key!r} has shape {shape}; expected {rank} "
                                   "positive sizes")
    pixels = VERSIONS[version][1]
    if shapes["encoder.conv1.weight"][1] != pixels or shapes["decoder.head.2.weight"][0] != pixels:
        raise UnsupportedModelError(
            f"{source}: Wan{version} VAE with {shapes['encoder.conv1.weight'][1]} input / "
            f"{shapes['decoder.head.2.weight'][0]} output channels; only the RGB layout ({pixels}) is supported")
    z_dim, channels = shapes["conv2.weight"][0], latent_space_of_vae(version).channels
    if z_dim != channels:
        raise UnsupportedModelError(f"{source}: Wan{version} VAE with a {z_dim}-channel latent; only "
                                    f"{channels} channels have official latent statistics")
    return VaeConfig(version, dim=shapes["encoder.conv1.weight"][0], dec_dim=shapes["decoder.head.0.gamma"][0],
                     z_dim=z_dim)


def build_vae(tensors: Mapping[str, torch.Tensor], *, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu", latent_format: str = "normalized", source: str = "state dict"
              ) -> WanVAE:
    """A Wan VAE from official-named tensors, every key and shape checked, weights cast to ``dtype``."""
    shapes = tensor_shapes(tensors)
    config = detect_vae_config(shapes, source)
    what = f"the Wan{config.version} VAE (dim {config.dim}, decoder {config.dec_dim})"
    check_shapes(network_shapes(config), shapes, what=what, source=source)  # before building anything
    with skeleton():
        model = latent_space_of_vae(config.version).vae_class(config, latent_format=latent_format)
    check_dtypes(model, tensors, source, f"the Wan{config.version} VAE")
    return assign_weights(model, tensors, dtype=dtype, device=device, source=source, shapes=shapes, what=what)


@functools.lru_cache(maxsize=8)
def network_shapes(config: VaeConfig) -> dict[str, tuple[int, ...]]:
    """key -> shape of every tensor the VAE of ``config`` holds (built once per config as a skeleton)."""
    with skeleton():
        model = latent_space_of_vae(config.version).vae_class(config)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


@boundary("Wan VAE")
def load_vae(path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
             latent_format: str = "normalized") -> WanVAE:
    """Load ``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth`` or a ComfyUI twin (``wan_2.1_vae.safetensors``, ...).

    Args:
        path: the VAE file; ``.pth`` files are read with ``torch.load(weights_only=True)``.
        dtype: weight and compute dtype (fp32 is the official; bf16 halves memory). Outputs are fp32.
        device: where the weights go.
        latent_format: the latent convention of ``encode``/``decode``. "normalized" (default):
            ``z = (mu - mean) / std`` per channel with the official statistics, what the Wan DiT and the
            official pipelines use. "comfy": raw VAE space ``mu``, the convention of ComfyUI's LATENT (its
            model applies the same mean/std internally), so latents interoperate with core nodes.

    Returns:
        `WanVAE21` or `WanVAE22`: ``encode(video [B,3,1+4k,H,W] in [-1,1]) -> [B,z,1+k,H/s,W/s]``,
        ``decode(latent) -> video in [-1,1]``, attributes ``z_dim`` and ``stride``.
    """
    path = Path(path)
    model = build_vae(read_vae_tensors(path), dtype=dtype, device=device, latent_format=latent_format,
                      source=shown(path))
    cfg = model.config
    log.info("Wan%s VAE from %s: z %d, widths %d/%d, %s on %s, %s latents", cfg.version, path.name, cfg.z_dim,
             cfg.dim, cfg.dec_dim, str(dtype).removeprefix("torch."), device, latent_format)
    return model
