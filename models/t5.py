"""umT5-XXL encoder (the Wan text encoder), official key names, and the text -> context entry point.

`UMT5Encoder.from_state_dict(tensors)` builds the network (dims inferred from shapes, so tiny test models load);
`TextEncoder(model, tokenizer).encode(prompts)` returns one ``[L_i, dim]`` context per prompt. Math: spec
networks.md §2 (no 1/sqrt(d) attention scaling, per-layer relative position bias, gated GELU-tanh FFN).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFormatError
from ..kernels.ops import TorchOps
from .checkpoint_checks import check_dtypes, count_blocks
from .skeleton import skeleton
from .weights import assign_weights, tensor_shapes

_BLOCK_KEY = re.compile(r"^blocks\.(\d{1,9})\.")
# The tensors a config is read from, and their rank.
_INFERRED_FROM = {"token_embedding.weight": 2, "blocks.0.attn.q.weight": 2, "blocks.0.ffn.fc1.weight": 2,
                  "blocks.0.pos_embedding.embedding.weight": 2}
# Tensors every block holds (their shapes equal block 0's).
BLOCK_TENSORS = ("norm1.weight", "attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.o.weight", "norm2.weight",
                 "ffn.gate.0.weight", "ffn.fc1.weight", "ffn.fc2.weight", "pos_embedding.embedding.weight")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shape of a umT5 encoder; the defaults are umT5-XXL.

    Attributes:
        vocab_size: rows of ``token_embedding`` (256384).
        dim: residual width (4096).
        attn_dim: width of q/k/v (4096 = 64 heads x 64).
        ffn_dim: gated-GELU hidden width (10240).
        num_heads: attention heads (64); read from the relative-position table.
        num_layers: encoder blocks (24).
        num_buckets: relative-position buckets (32).
        max_distance: relative distance at which buckets saturate (128; never stored in files).
        eps: RMSNorm epsilon (1e-6; never stored in files).
    """

    vocab_size: int = 256384
    dim: int = 4096
    attn_dim: int = 4096
    ffn_dim: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6

    @classmethod
    def infer(cls, shapes: Mapping[str, tuple[int, ...]], source: str = "state dict") -> "T5Config":
        """The config from official-named tensor shapes (key -> shape)."""
        sizes = {}
        for key, rank in _INFERRED_FROM.items():
            shape = shapes.get(key)
            if shape is None or len(shape) != rank or not all(size > 0 for size in shape):
                found = "missing" if shape is None else f"of shape {tuple(shape)}"
                raise ModelFormatError(f"{source}: not a umT5 encoder: tensor {key} is {found}; expected "
                                       f"{rank} positive sizes")
            sizes[key] = tuple(shape)
        vocab_size, dim = sizes["token_embedding.weight"]
        attn_dim = sizes["blocks.0.attn.q.weight"][0]
        ffn_dim = sizes["blocks.0.ffn.fc1.weight"][0]
        num_buckets, num_heads = sizes["blocks.0.pos_embedding.embedding.weight"]
        if attn_dim % num_heads:
            raise ModelFormatError(f"{source}: umT5 q width {attn_dim} (blocks.0.attn.q.weight) is not a multiple "
                                   f"of its {num_heads} heads (blocks.0.pos_embedding.embedding.weight)")
        num_layers = count_blocks(shapes, _BLOCK_KEY, BLOCK_TENSORS, source, "umT5 encoder")
        return cls(vocab_size=vocab_size, dim=dim, attn_dim=attn_dim, ffn_dim=ffn_dim, num_heads=num_heads,
                   num_layers=num_layers, num_buckets=num_buckets)


class T5RMSNorm(nn.Module):
    """Holds a T5 norm's ``weight`` [dim] and ``eps``; the math is `TorchOps.rms_norm`, called by the owner through
    its ops so that a quantizing ops can emit the activation of the Linear the norm feeds in the same kernel."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5 buckets of ``key_pos - query_pos`` (networks.md §2.2): exact below 1/4 of the buckets
    per direction, logarithmic up to ``max_distance``, saturated beyond."""
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    # clamp(min=1) only keeps log() finite where the exact branch is taken anyway
    log_part = exact + (torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                        * (half - exact)).long()
    log_part = log_part.clamp(max=half - 1)
    return buckets + torch.where(distance < exact, distance, log_part)


class T5RelativeBias(nn.Module):
    """Per-layer relative position bias; key ``pos_embedding.embedding.weight`` [buckets, heads]."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.num_buckets, self.max_distance = config.num_buckets, config.max_distance
        self.embedding = nn.Embedding(config.num_buckets, config.num_heads)

    def forward(self, length: int) -> torch.Tensor:
        """-> [1, heads, length, length] in the table dtype."""
        positions = torch.arange(length, device=self.embedding.weight.device)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None], self.num_buckets,
                                           self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


class T5Attention(nn.Module):
    def __init__(self, ops: TorchOps, config: T5Config, name: str):
        super().__init__()
        self.num_heads = config.num_heads
        self.q = ops.linear(config.dim, config.attn_dim, name=f"{name}.q", bias=False)
        self.k = ops.linear(config.dim, config.attn_dim, name=f"{name}.k", bias=False)
        self.v = ops.linear(config.dim, config.attn_dim, name=f"{name}.v", bias=False)
        self.o = ops.linear(config.attn_dim, config.dim, name=f"{name}.o", bias=False)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim] (or a pre-quantized activation from a fused norm); position_bias: [1, heads, L, L];
        key_mask: [B, 1, 1, L] bool, False on padded keys."""
        batch, length, _ = x.shape
        q, k, v = (proj(x).view(batch, length, self.num_heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        # Padded keys get the dtype minimum (not -inf), as in the official code.
        bias = position_bias.to(q.dtype).masked_fill(~key_mask, torch.finfo(q.dtype).min)
        # T5 folds the 1/sqrt(d) scaling into its weights: scale must be 1.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return self.o(out.transpose(1, 2).reshape(batch, length, -1))


class T5FeedForward(nn.Module):
    def __init__(self, ops: TorchOps, config: T5Config, name: str):
        super().__init__()
        # Sequential keeps the official key name ffn.gate.0.weight. The GELU is named for itself: its output is
        # multiplied by fc1's before fc2 consumes it, so it must stay a float tensor (never quantized for fc2).
        self.gate = nn.Sequential(ops.linear(config.dim, config.ffn_dim, name=f"{name}.gate.0", bias=False),
                                  ops.gelu_tanh(name=f"{name}.gate.1"))
        self.fc1 = ops.linear(config.dim, config.ffn_dim, name=f"{name}.fc1", bias=False)
        self.fc2 = ops.linear(config.ffn_dim, config.dim, name=f"{name}.fc2", bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim] (or a pre-quantized activation from a fused norm) -> [B, L, dim]."""
        return self.fc2(self.fc1(x) * self.gate(x))


class T5Block(nn.Module):
    def __init__(self, ops: TorchOps, config: T5Config, name: str):
        super().__init__()
        self.ops, self.name = ops, name
        self.norm1 = T5RMSNorm(config.dim, config.eps)
        self.attn = T5Attention(ops, config, f"{name}.attn")
        self.norm2 = T5RMSNorm(config.dim, config.eps)
        self.ffn = T5FeedForward(ops, config, f"{name}.ffn")
        self.pos_embedding = T5RelativeBias(config)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim] residual stream; key_mask: [B, 1, 1, L] bool, False on padded keys."""
        # Each norm is named after the first Linear it feeds (q of q/k/v, gate of gate/fc1).
        attn_in = self.ops.rms_norm(x, self.norm1.weight, self.norm1.eps, name=f"{self.name}.attn.q")
        x = x + self.attn(attn_in, self.pos_embedding(x.shape[1]), key_mask)
        ffn_in = self.ops.rms_norm(x, self.norm2.weight, self.norm2.eps, name=f"{self.name}.ffn.gate.0")
        return x + self.ffn(ffn_in)


class UMT5Encoder(nn.Module):
    """umT5 encoder stack. Official keys: ``token_embedding``, ``blocks.N.*``, ``norm``."""

    def __init__(self, config: T5Config, ops: TorchOps | None = None):
        super().__init__()
        self.ops = ops = ops or TorchOps()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(T5Block(ops, config, f"blocks.{i}") for i in range(config.num_layers))
        self.norm = T5RMSNorm(config.dim, config.eps)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], *, dtype: torch.dtype = torch.bfloat16,
                        device: torch.device | str = "cpu", ops: TorchOps | None = None,
                        source: str = "state dict") -> "UMT5Encoder":
        """Build strictly from official-named tensors (quantized layers in canonical form, matching ``ops``).

        dtype: weight and activation dtype (official: bf16); quantization scales stay fp32.
        """
        shapes = tensor_shapes(state_dict)
        with skeleton():
            model = cls(T5Config.infer(shapes, source), ops=ops)
        check_dtypes(model, state_dict, source, "the umT5 encoder")
        return assign_weights(model, state_dict, dtype=dtype, device=device, shapes=shapes, what="a umT5 encoder",
                              source=source)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids: [B, L] token ids; mask: [B, L] (1 real, 0 padding) -> [B, L, dim] in the embedding dtype.

        Only keys are masked; padded query rows are computed like the official code and are meant to be dropped.
        """
        x = self.token_embedding(ids)
        key_mask = mask.bool()[:, None, None, :]
        for block in self.blocks:
            x = block(x, key_mask)
        return self.ops.rms_norm(x, self.norm.weight, self.norm.eps, name="norm")


class TextEncoder:
    """Prompts -> Wan text context: tokenizer + umT5 encoder, trimmed to each prompt's real length.

    Args:
        model: the encoder.
        tokenizer: ``tokenizer(prompts) -> (ids [B, 512], mask [B, 512])``, cleaned, with ``</s>``, zero-padded.
    """

    def __init__(self, model: UMT5Encoder, tokenizer: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]):
        self.model = model
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """One context ``[L_i, dim]`` per prompt (L_i real tokens including ``</s>``), in the model dtype.

        The batch runs padded to the tokenizer length with padded keys masked, as the official encoder does;
        the DiT zero-pads each context back to 512 rows.
        """
        ids, mask = self.tokenizer(list(prompts))
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(ids, mask)
        return [states[:length] for states, length in zip(hidden, mask.sum(dim=1).tolist())]
