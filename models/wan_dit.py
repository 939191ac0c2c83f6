"""The Wan diffusion transformer (Wan2.1 T2V/I2V/FLF2V, Wan2.2 A14B experts and TI2V-5B) with official key names.

Entry point: `WanDiT.from_state_dict(sd, config=None, dtype=..., device=...)`, then
`model(x, t, context, clip_fea=None, y=None)` returns the velocity. Linears, attention and the ops that feed
linears come from an injected `TorchOps`-like factory, so quantized kernels plug in without touching this file.
Math follows spec networks.md §1; in bf16 the official fp32 islands (modulation, norms, residual stream, time
embedding, head) stay fp32. The residual stream is one contiguous fp32 [B, S, D] tensor that the blocks update in
place; q/k norms, RoPE, casts and gated adds are the ops' fused kernels (`kernels.fused`, rounding documented there).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import InvalidInputError
from ..kernels.fused import precise_dtype, rope_tables
from ..kernels.ops import TorchOps
from .wan_config import WanConfig
from .weights import assign_weights, tensor_shapes

# Parameters kept in fp32 whatever the model dtype (official autocast(fp32) regions and fp32 norms).
KEEP_IN_FP32 = re.compile(
    r"^(time_embedding|time_projection|head)\."
    r"|(^|\.)modulation$"
    r"|\.norm(3|_q|_k|_k_img)\."
    r"|^img_emb\.(proj\.[04]\.|emb_pos$)")


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Timestep embedding, cos block first. t: [N] -> [N, dim] float32 (computed in fp64)."""
    half = dim // 2
    dtype = precise_dtype(t.device)
    freqs = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=dtype) / half)
    angles = t.to(dtype)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


class WanRMSNorm(nn.Module):
    """The weight [D] and eps of a q/k RMSNorm; the ops apply it, fused with RoPE and the cast
    (`TorchOps.qk_norm_rope`, `TorchOps.qk_norm`; math in `kernels.fused.rms_norm_reference`)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype; returns fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)


class CastConv3d(nn.Conv3d):
    """Conv3d whose input is cast to the weight dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


@dataclasses.dataclass
class TimeConditioning:
    """Timestep embeddings for a batch, stored once per distinct timestep row and indexed per token.

    e: [N, D] time_embedding output; e0: [N, 6, D] time_projection output; index: [B, S] (per-token
    timesteps) or [B, 1] selecting rows of e/e0, or None when row i is sample i (one timestep per sample).
    """

    e: torch.Tensor
    e0: torch.Tensor
    index: torch.Tensor | None

    def to_tokens(self, rows: torch.Tensor) -> torch.Tensor:
        """rows: [N, ...] -> [B, S or 1, ...] broadcastable over the tokens (a view when ``index`` is None)."""
        return rows[:, None] if self.index is None else rows[self.index]


class WanSelfAttention(nn.Module):
    def __init__(self, ops: TorchOps, config: WanConfig, name: str):
        super().__init__()
        dim, self.num_heads = config.dim, config.num_heads
        self.ops = ops
        for proj in ("q", "k", "v", "o"):
            setattr(self, proj, ops.linear(dim, dim, name=f"{name}.{proj}"))
        self.norm_q = WanRMSNorm(dim, config.eps)
        self.norm_k = WanRMSNorm(dim, config.eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], compute_dtype: torch.dtype):
        """x: [B, S, D] (or a pre-quantized activation) -> [B, S, D]."""
        q = self.ops.qk_norm_rope(self.q(x), self.norm_q.weight, rope, self.norm_q.eps, compute_dtype)
        k = self.ops.qk_norm_rope(self.k(x), self.norm_k.weight, rope, self.norm_k.eps, compute_dtype)
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)) for t in (q, k, self.v(x)))
        heads = [t.transpose(1, 2).to(compute_dtype) for t in (q, k, v)]
        out = self.ops.attention(*heads, kind="self").transpose(1, 2).flatten(2)
        return self.o(out)


class WanCrossAttention(nn.Module):
    """Attention from video tokens to text (and, with the CLIP branch, separately to image) tokens."""

    def __init__(self, ops: TorchOps, config: WanConfig, name: str):
        super().__init__()
        dim, self.num_heads = config.dim, config.num_heads
        self.ops = ops
        self.image_tokens = config.image_tokens
        for proj in ("q", "k", "v", "o"):
            setattr(self, proj, ops.linear(dim, dim, name=f"{name}.{proj}"))
        self.norm_q = WanRMSNorm(dim, config.eps)
        self.norm_k = WanRMSNorm(dim, config.eps)
        if config.clip_branch:
            self.k_img = ops.linear(dim, dim, name=f"{name}.k_img")
            self.v_img = ops.linear(dim, dim, name=f"{name}.v_img")
            self.norm_k_img = WanRMSNorm(dim, config.eps)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, compute_dtype: torch.dtype):
        k = k.unflatten(-1, (self.num_heads, -1)).transpose(1, 2).to(compute_dtype)
        v = v.unflatten(-1, (self.num_heads, -1)).transpose(1, 2).to(compute_dtype)
        return self.ops.attention(q, k, v, kind="cross").transpose(1, 2).flatten(2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
        """x: [B, S, D]; context: [B, image_tokens + 512, D] (image tokens first) -> [B, S, D]."""
        q = self._norm(self.norm_q, self.q(x), compute_dtype).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        image, text = context[:, :self.image_tokens], context[:, self.image_tokens:]
        out = self._attend(q, self._norm(self.norm_k, self.k(text), compute_dtype), self.v(text), compute_dtype)
        if self.image_tokens:
            out = out + self._attend(q, self._norm(self.norm_k_img, self.k_img(image), compute_dtype),
                                     self.v_img(image), compute_dtype)
        return self.o(out)

    def _norm(self, norm: WanRMSNorm, x: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
        return self.ops.qk_norm(x, norm.weight, norm.eps, compute_dtype)


class WanBlock(nn.Module):
    # The op outputs that feed linears, by the block-relative name the block gives the ops for each (that of its first
    # linear: LayerNorm + modulation, the cross-attention LayerNorm, the FFN GELU), and the linears that take each.
    # An ops factory may quantize such an output in the producing kernel; `float_inputs` turns that off.
    PRODUCERS = {"self_attn.q": ("self_attn.q", "self_attn.k", "self_attn.v"), "cross_attn.q": ("cross_attn.q",),
                 "ffn.0": ("ffn.0",), "ffn.2": ("ffn.2",)}

    def __init__(self, ops: TorchOps, config: WanConfig, name: str):
        super().__init__()
        dim, self.eps, self.name = config.dim, config.eps, name
        self.ops, self.block_ops = ops, ops.for_block(name)
        self.self_attn = WanSelfAttention(ops, config, f"{name}.self_attn")
        self.norm3 = FP32LayerNorm(dim, eps=config.eps)
        self.cross_attn = WanCrossAttention(ops, config, f"{name}.cross_attn")
        self.ffn = nn.Sequential(
            ops.linear(dim, config.ffn_dim, name=f"{name}.ffn.0"),
            ops.gelu_tanh(name=f"{name}.ffn.2"),
            ops.linear(config.ffn_dim, dim, name=f"{name}.ffn.2"))
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))

    def producers_of(self, layers: Iterable[str]) -> set[str]:
        """Official names of the ops whose output feeds any of ``layers`` (block-relative linears, ``ffn.2``)."""
        layers = set(layers)
        return {f"{self.name}.{producer}" for producer, consumers in self.PRODUCERS.items()
                if layers.intersection(consumers)}

    def float_inputs(self, layers: Iterable[str]) -> Callable[[], None]:
        """Have the ops producing the inputs of ``layers`` (block linears, e.g. ``ffn.2``) return float, never a fused
        quantization (`TorchOps.float_inputs`); the linears stay as built. Returns the call that undoes it."""
        names = self.producers_of(layers)
        ops, block_ops, activation = self.ops, self.block_ops, self.ffn[1]
        self.ops = ops.float_inputs(names)
        self.block_ops = self.ops.for_block(self.name)
        if f"{self.name}.ffn.2" in names:
            self.ffn[1] = self.ops.gelu_tanh(name=f"{self.name}.ffn.2")

        def restore() -> None:
            self.ops, self.block_ops, self.ffn[1] = ops, block_ops, activation
        return restore

    def forward(self, x: torch.Tensor, time: TimeConditioning, context: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], compute_dtype: torch.dtype) -> torch.Tensor:
        """x: [B, S, D] fp32 residual stream, updated in place and returned."""
        mod = time.to_tokens(self.modulation[0] + time.e0)  # [B, S or 1, 6, D]; the six chunks are views
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(2)
        attn_in = self.block_ops.norm_modulate(x, shift_sa, scale_sa, self.eps, name="self_attn.q")
        self.block_ops.gated_residual_(x, self.self_attn(attn_in, rope, compute_dtype), gate_sa)
        cross_in = self.block_ops.layer_norm(x, self.norm3.weight, self.norm3.bias, self.eps,
                                             name="cross_attn.q")
        self.block_ops.gated_residual_(x, self.cross_attn(cross_in, context, compute_dtype), None)
        for tokens in self.block_ops.token_chunks(x.shape[1]):
            part = x[:, tokens]
            shift, scale, gate = (_token_slice(m, tokens) for m in (shift_ff, scale_ff, gate_ff))
            ffn_in = self.block_ops.norm_modulate(part, shift, scale, self.eps, name="ffn.0")
            self.block_ops.gated_residual_(part, self.ffn(ffn_in), gate)
        return x


def _token_slice(modulation: torch.Tensor, tokens: slice) -> torch.Tensor:
    """The rows of a [B, S or 1, D] modulation chunk for the token slice (all of a per-sample one)."""
    return modulation if modulation.shape[1] == 1 else modulation[:, tokens]


class WanHead(nn.Module):
    def __init__(self, ops: TorchOps, config: WanConfig):
        super().__init__()
        self.eps = config.eps
        self.head = ops.linear(config.dim, 4 * config.out_dim, name="head.head")
        self.modulation = nn.Parameter(torch.zeros(1, 2, config.dim))

    def forward(self, x: torch.Tensor, time: TimeConditioning) -> torch.Tensor:
        """x: [B, S, D] -> [B, S, 4*out_dim] fp32; modulation from e (not e0)."""
        mod = self.modulation[0] + time.e[:, None, :]
        shift, scale = time.to_tokens(mod[:, 0]), time.to_tokens(mod[:, 1])
        normed = F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.head(normed * (1 + scale) + shift).float()


class ImageProjection(nn.Module):
    """CLIP tokens -> model width (Wan2.1 I2V/FLF2V ``img_emb``): LN -> Linear -> GELU -> Linear -> LN."""

    def __init__(self, ops: TorchOps, config: WanConfig):
        super().__init__()
        clip_dim = config.clip_dim
        self.proj = nn.Sequential(
            FP32LayerNorm(clip_dim, eps=1e-5),
            ops.linear(clip_dim, clip_dim, name="img_emb.proj.1"),
            nn.GELU(),
            ops.linear(clip_dim, config.dim, name="img_emb.proj.3"),
            FP32LayerNorm(config.dim, eps=1e-5))
        if config.model_type == "flf2v":
            self.emb_pos = nn.Parameter(torch.zeros(1, config.image_tokens, clip_dim))

    def forward(self, clip_fea: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "emb_pos"):
            clip_fea = clip_fea.float() + self.emb_pos
        return self.proj(clip_fea)


class WanDiT(nn.Module):
    """Wan DiT. Build with `from_state_dict`; construction alone allocates on the current default device."""

    def __init__(self, config: WanConfig, ops: TorchOps | None = None):
        super().__init__()
        self.config = config
        self.ops = ops = ops or TorchOps()
        dim = config.dim
        self.patch_embedding = CastConv3d(config.in_dim, dim, kernel_size=config.patch_size,
                                          stride=config.patch_size)
        self.text_embedding = nn.Sequential(
            ops.linear(config.text_dim, dim, name="text_embedding.0"),
            nn.GELU(approximate="tanh"),
            ops.linear(dim, dim, name="text_embedding.2"))
        self.time_embedding = nn.Sequential(
            ops.linear(config.freq_dim, dim, name="time_embedding.0"),
            nn.SiLU(),
            ops.linear(dim, dim, name="time_embedding.2"))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.linear(dim, 6 * dim, name="time_projection.1"))
        self.blocks = nn.ModuleList(WanBlock(ops, config, f"blocks.{i}") for i in range(config.num_layers))
        self.head = WanHead(ops, config)
        if config.clip_branch:
            self.img_emb = ImageProjection(ops, config)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], config: WanConfig | None = None,
                        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                        ops: TorchOps | None = None, source: str = "state dict") -> "WanDiT":
        """Build a model from official-named tensors, strictly.

        Args:
            state_dict: key -> tensor; may be a lazy mapping (tensors are fetched and converted one at a time).
            config: the architecture, or None to infer it from the shapes (`WanConfig.from_json` reads a
                ``config.json``).
            dtype: compute dtype of the matmul weights (fp32 or bf16); fp32 islands stay fp32.
            device: where the weights go.
            ops: operations factory (default: plain PyTorch).
            source: file or folder name for error messages.
        """
        shapes = tensor_shapes(state_dict)
        if config is None:
            config = WanConfig.infer(shapes, source=source)
        with torch.device("meta"):
            model = cls(config, ops=ops)
        return assign_weights(model, state_dict, dtype=dtype, device=device, shapes=shapes, keep_fp32=KEEP_IN_FP32,
                              what=f"a {config.model_type} Wan DiT (dim {config.dim}, {config.num_layers} blocks)",
                              source=source)

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype attention and matmuls run in: that of the patch embedding weight."""
        return self.patch_embedding.weight.dtype

    def _rope(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():  # in the graph: a cache would be guarded, one more compile per resolution
            return rope_tables(grid, self.config.head_dim, device)
        key = (grid, device)
        if key not in self._rope_cache:
            self._rope_cache = {key: rope_tables(grid, self.config.head_dim, device)}
        return self._rope_cache[key]

    def _embed_time(self, t: torch.Tensor, batch: int, tokens: int) -> TimeConditioning:
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 2 and t.shape[1] == tokens and bool((t == t[:, :1]).all()):
            t = t[:, 0]  # uniform per-token timesteps are the scalar form
        if t.dim() == 1 and t.shape[0] == batch:
            rows, index = t, None
        elif t.dim() == 2 and t.shape == (batch, tokens):
            rows, index = torch.unique(t, return_inverse=True)
        else:
            raise InvalidInputError(f"timestep t has shape {tuple(t.shape)}; expected [{batch}] or [{batch}, {tokens}]")
        e = self.time_embedding(sinusoidal_embedding(rows, self.config.freq_dim)).float()
        e0 = self.time_projection(e).float().unflatten(1, (6, self.config.dim))
        return TimeConditioning(e=e, e0=e0, index=index)

    def _embed_context(self, context: torch.Tensor, clip_fea: torch.Tensor | None, batch: int) -> torch.Tensor:
        cfg = self.config
        if context.dim() != 3 or context.shape[0] != batch or context.shape[2] != cfg.text_dim:
            raise InvalidInputError(f"context has shape {tuple(context.shape)}; expected [{batch}, <=512, {cfg.text_dim}]")
        if context.shape[1] > cfg.text_len:
            raise InvalidInputError(f"context has {context.shape[1]} text tokens; the model takes at most {cfg.text_len}")
        context = F.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))
        text = self.text_embedding(context)
        if not cfg.clip_branch:
            if clip_fea is not None:
                raise InvalidInputError("this model has no CLIP branch; clip_fea must be None")
            return text
        if clip_fea is None:
            raise InvalidInputError(f"this {cfg.model_type} model needs clip_fea [B, {cfg.image_tokens}, {cfg.clip_dim}]")
        clip_fea = clip_fea.reshape(batch, -1, cfg.clip_dim)
        if clip_fea.shape[1] != cfg.image_tokens:
            raise InvalidInputError(f"clip_fea has {clip_fea.shape[1]} tokens; this {cfg.model_type} model expects "
                                    f"{cfg.image_tokens}")
        image = self.img_emb(clip_fea)
        return torch.cat([image.to(text.dtype), text], dim=1)

    def _run_blocks(self, tokens: torch.Tensor, time: TimeConditioning, context: torch.Tensor,
                    rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The blocks over the fp32 residual stream [B, S, D]; a variant adds to it here (models.wan_vace)."""
        for block in self.blocks:
            tokens = block(tokens, time, context, rope, self.compute_dtype)
        return tokens

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                clip_fea: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the flow-matching velocity.

        Args:
            x: [B, C, F, H, W] noisy latent (H, W even).
            t: [B] or [B, S] timesteps in [0, 1000] (S = F*H*W/4 tokens; per-token for TI2V).
            context: [B, L_txt <= 512, text_dim] text embeddings, zero-padded to 512 here.
            clip_fea: [B, 257, 1280] CLIP tokens (flf2v: [B, 514, 1280]); Wan2.1 i2v/flf2v only.
            y: [B, in_dim - C, F, H, W] conditioning concatenated after the latent (i2v/flf2v).

        Returns:
            velocity [B, out_dim, F, H, W] float32.
        """
        cfg = self.config
        if x.dim() != 5:
            raise InvalidInputError(f"latent x has shape {tuple(x.shape)}; expected [B, C, F, H, W]")
        batch, channels, frames, height, width = x.shape
        y_channels = 0 if y is None else y.shape[1]
        if channels + y_channels != cfg.in_dim or (y is not None and y.shape[2:] != x.shape[2:]):
            raise InvalidInputError(
                f"latent {tuple(x.shape)} and y {None if y is None else tuple(y.shape)} give {channels + y_channels} "
                f"channels; this {cfg.model_type} model takes {cfg.in_dim} ({cfg.out_dim} latent + {cfg.y_dim} y)")
        if height % 2 or width % 2:
            raise InvalidInputError(f"latent height and width must be even, got {height}x{width}")
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        tokens = self.patch_embedding(x)
        grid = tuple(tokens.shape[2:])
        # the residual stream, one contiguous fp32 copy that the blocks update in place
        tokens = torch.empty(batch, tokens[0, 0].numel(), cfg.dim, device=tokens.device).copy_(
            tokens.flatten(2).transpose(1, 2))
        time = self._embed_time(t.to(tokens.device), batch, tokens.shape[1])
        context = self._embed_context(context.to(tokens.device), clip_fea, batch)
        rope = self._rope(grid, tokens.device)
        tokens = self._run_blocks(tokens, time, context, rope)
        out = self.head(tokens, time)
        f, h, w = grid
        pt, ph, pw = cfg.patch_size
        return rearrange(out, "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)", f=f, h=h, w=w, pt=pt, ph=ph, pw=pw)
