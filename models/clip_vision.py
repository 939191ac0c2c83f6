"""CLIP ViT-H/14 visual tower (open-clip XLM-R checkpoint) as Wan2.1 I2V/FLF2V uses it: penultimate block output.

`ClipVisionEncoder.from_state_dict(tensors)` builds the tower from official names without the ``visual.`` prefix
(dims inferred from shapes); `encode(images)` applies the official preprocessing and returns ``[N, 257, 1280]``.
Math: spec networks.md §3 (pre-norm ViT, exact GELU, the first L-1 of L blocks, no post-norm, no head).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError, ModelFormatError
from ..kernels.ops import TorchOps
from .checkpoint_checks import check_dtypes, count_blocks
from .skeleton import skeleton
from .weights import assign_weights, tensor_shapes

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_DIM = 80  # ViT-H/14: 1280 wide, 16 heads; heads are not stored in the file
_BLOCK_KEY = re.compile(r"^transformer\.(\d{1,9})\.")
# The tensors a config is read from, and their rank.
_INFERRED_FROM = {"patch_embedding.weight": 4, "pos_embedding": 3, "transformer.0.mlp.0.weight": 2}
# Tensors every block holds (their shapes equal block 0's).
BLOCK_TENSORS = ("norm1.weight", "norm1.bias", "attn.to_qkv.weight", "attn.to_qkv.bias", "attn.proj.weight",
                 "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                 "mlp.2.bias")
# LayerNorms compute in fp32 (official wrapper upcasts), so their parameters stay fp32.
KEEP_IN_FP32 = re.compile(r"(^pre_norm|\.norm[12])\.")


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
    """Shape of the visual tower; defaults are ViT-H/14.

    Attributes:
        image_size: input side after resizing (224).
        patch_size: conv patch (14) -> (224/14)^2 = 256 patches + 1 class token.
        dim: width (1280).
        mlp_dim: MLP hidden width (5120).
        num_heads: attention heads (16, i.e. ``dim / 80``).
        num_layers: blocks in the checkpoint (32); the encoder runs the first ``num_layers - 1``.
        eps: LayerNorm epsilon (1e-5).
    """

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    mlp_dim: int = 5120
    num_heads: int = 16
    num_layers: int = 32
    eps: float = 1e-5

    @classmethod
    def infer(cls, shapes: Mapping[str, tuple[int, ...]], source: str = "state dict") -> "ClipVisionConfig":
        """The config from official tower shapes (``visual.`` prefix removed); heads assume 80-wide heads."""
        for key, rank in _INFERRED_FROM.items():
            shape = shapes.get(key)
            if shape is None or len(shape) != rank or not all(size > 0 for size in shape):
                found = "missing" if shape is None else f"of shape {tuple(shape)}"
                raise ModelFormatError(f"{source}: not a CLIP vision tower: tensor {key} is {found}; expected "
                                       f"{rank} positive sizes")
        dim, _, patch_size, _ = shapes["patch_embedding.weight"]
        tokens = shapes["pos_embedding"][1]
        mlp_dim = shapes["transformer.0.mlp.0.weight"][0]
        grid = math.isqrt(tokens - 1)
        if grid == 0 or grid * grid != tokens - 1 or dim % HEAD_DIM:
            raise ModelFormatError(f"{source}: {tokens} positions (pos_embedding) / width {dim} "
                                   f"(patch_embedding.weight) do not fit a square ViT with {HEAD_DIM}-wide heads")
        num_layers = count_blocks(shapes, _BLOCK_KEY, BLOCK_TENSORS, source, "CLIP vision tower")
        return cls(image_size=grid * patch_size, patch_size=patch_size, dim=dim, mlp_dim=mlp_dim,
                   num_heads=dim // HEAD_DIM, num_layers=num_layers)


class RoundTripLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and returned in the input dtype (the official CLIP wrapper); unlike the DiT's
    `FP32LayerNorm`, which keeps the fp32 result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ClipAttention(nn.Module):
    def __init__(self, ops: TorchOps, config: ClipVisionConfig, name: str):
        super().__init__()
        self.num_heads = config.num_heads
        self.to_qkv = ops.linear(config.dim, 3 * config.dim, name=f"{name}.to_qkv")
        self.proj = ops.linear(config.dim, config.dim, name=f"{name}.proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, T, dim] -> [N, T, dim]; qkv rows are q, then k, then v; softmax(q·kᵀ/sqrt(d))."""
        batch, tokens, dim = x.shape
        q, k, v = self.to_qkv(x).view(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class ClipBlock(nn.Module):
    def __init__(self, ops: TorchOps, config: ClipVisionConfig, name: str):
        super().__init__()
        self.norm1 = RoundTripLayerNorm(config.dim, eps=config.eps)
        self.attn = ClipAttention(ops, config, f"{name}.attn")
        self.norm2 = RoundTripLayerNorm(config.dim, eps=config.eps)
        # Sequential keeps the official names mlp.0 / mlp.2.
        self.mlp = nn.Sequential(ops.linear(config.dim, config.mlp_dim, name=f"{name}.mlp.0"), nn.GELU(),
                                 ops.linear(config.mlp_dim, config.dim, name=f"{name}.mlp.2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ClipVisionEncoder(nn.Module):
    """The visual tower up to its penultimate block. Keys: ``patch_embedding.weight``, ``cls_embedding``,
    ``pos_embedding``, ``pre_norm.*``, ``transformer.N.*`` for N < num_layers - 1."""

    def __init__(self, config: ClipVisionConfig, ops: TorchOps | None = None):
        super().__init__()
        ops = ops or TorchOps()
        self.config = config
        self.patch_embedding = nn.Conv2d(3, config.dim, config.patch_size, stride=config.patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, config.dim))
        tokens = (config.image_size // config.patch_size) ** 2 + 1
        self.pos_embedding = nn.Parameter(torch.zeros(1, tokens, config.dim))
        self.pre_norm = RoundTripLayerNorm(config.dim, eps=config.eps)
        # Wan takes the input of the last block: that block is never built.
        self.transformer = nn.Sequential(*(ClipBlock(ops, config, f"transformer.{i}")
                                           for i in range(config.num_layers - 1)))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], *, dtype: torch.dtype = torch.float16,
                        device: torch.device | str = "cpu", ops: TorchOps | None = None,
                        source: str = "state dict") -> "ClipVisionEncoder":
        """Build from the tower's official names (no ``visual.`` prefix); the last block, ``post_norm`` and
        ``head`` may be present and are not loaded. dtype: weights/activations (official: fp16); norms fp32."""
        shapes = tensor_shapes(state_dict)
        config = ClipVisionConfig.infer(shapes, source)
        with skeleton():
            model = cls(config, ops=ops)
        check_dtypes(model, state_dict, source, "the CLIP vision tower")
        unused = re.compile(rf"^(transformer\.{config.num_layers - 1}\.|post_norm\.|head$)")
        assign_weights(model, state_dict, dtype=dtype, device=device, shapes=shapes, keep_fp32=KEEP_IN_FP32,
                       ignore=unused, what="a CLIP vision tower", source=source)
        # non-persistent buffers are not in the state dict: make them real on the target device
        model.mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        model.std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
        return model

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] in [-1, 1] -> [N, 3, 224, 224] normalised, in the model dtype.

        Official geometry: bicubic resize straight to 224x224 (aspect ratio not kept, no crop), computed in fp32.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise InvalidInputError(f"CLIP vision expects images [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        size = (self.config.image_size,) * 2
        resized = F.interpolate(images.float().to(self.mean.device), size=size, mode="bicubic", align_corners=False)
        return ((resized * 0.5 + 0.5 - self.mean) / self.std).to(self.dtype)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: [N, 3, 224, 224] preprocessed -> [N, 257, dim] (input of the last block, no post-norm)."""
        patches = self.patch_embedding(pixels.to(self.dtype)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_embedding.expand(patches.shape[0], -1, -1), patches], dim=1)
        return self.transformer(self.pre_norm(tokens + self.pos_embedding))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] in [-1, 1] (N = 1 for I2V, 2 for first+last frame FLF2V) -> ``clip_fea``
        [N, 257, 1280] in the model dtype."""
        return self(self.preprocess(images))
