"""Wan2.1 VACE: the T2V DiT plus a context branch whose hints are added to the residual stream (official key names).

The branch (``vace_patch_embedding`` + ``vace_blocks``) embeds the VACE context [B, 96, F, H, W] (16 inactive and 16
reactive latent channels, then 64 mask channels; `sampling.vace` builds it) with the base model's grid, runs it
through Wan blocks of its own (block 0 first adds ``before_proj(c)`` to the embedded latent tokens), and each block's
``after_proj`` output is a hint added, times the strength, after base block ``vace_layers[n]``.

Entry points: `WanVaceDiT` (``model(x, t, context, vace_context=None, vace_strength=1.0)``) and
`vace_model_class(base)`, the VACE model of a `WanDiT` subclass (the loader builds it when the config is VACE).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..errors import InvalidInputError
from ..kernels.ops import TorchOps
from .wan_config import WanConfig
from .wan_dit import CastConv3d, TimeConditioning, WanBlock, WanDiT


class VaceBlock(WanBlock):
    """A Wan block of the VACE branch: ``before_proj`` (block 0 only) and ``after_proj`` around the base block."""

    def __init__(self, ops: TorchOps, config: WanConfig, index: int):
        name = f"vace_blocks.{index}"
        super().__init__(ops, config, name)
        if index == 0:
            self.before_proj = ops.linear(config.dim, config.dim, name=f"{name}.before_proj")
        self.after_proj = ops.linear(config.dim, config.dim, name=f"{name}.after_proj")

    def run(self, c: torch.Tensor, x: torch.Tensor, time: TimeConditioning, context: torch.Tensor,
            rope: tuple[torch.Tensor, torch.Tensor], compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """c: [B, S, D] branch stream; x: [B, S, D] embedded latent tokens -> (next c, hint), both fp32."""
        if hasattr(self, "before_proj"):
            c = self.before_proj(c).float() + x
        c = super().forward(c, time, context, rope, compute_dtype)
        return c, self.after_proj(c).float()


class VaceMixin:
    """Adds the VACE branch to a `WanDiT` (class): modules, forward arguments and hints after ``vace_layers``."""

    def __init__(self, config: WanConfig, ops: TorchOps | None = None):
        super().__init__(config, ops=ops)
        if not config.is_vace:
            raise InvalidInputError("a VACE model needs a config with vace_layers (WanConfig.is_vace)")
        self.vace_patch_embedding = CastConv3d(config.vace_in_dim, config.dim, kernel_size=config.patch_size,
                                               stride=config.patch_size)
        self.vace_blocks = nn.ModuleList(VaceBlock(self.ops, config, n) for n in range(len(config.vace_layers)))
        self._vace_input: tuple[torch.Tensor, float] | None = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, vace_context: torch.Tensor | None = None,
                vace_strength: float = 1.0, clip_fea: torch.Tensor | None = None, y: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        """The velocity of the base forward (shapes there), with VACE hints when ``vace_context`` is given.

        Args:
            vace_context: [B, vace_in_dim, F, H, W] with the latent's F, H, W (reference frames included); core's
                stacked form [B, 1, vace_in_dim, F, H, W] is taken too.
            vace_strength: the context scale multiplying every hint (official ``context_scale``); or core's
                one-element list.
        """
        if vace_context is not None and vace_context.dim() == 6:  # core's stack of contexts [B, N, 96, F, H, W]
            if vace_context.shape[1] != 1:
                raise InvalidInputError(f"this VACE model takes one VACE conditioning; got {vace_context.shape[1]} "
                                        "(chained VACE nodes): use one")
            vace_context = vace_context[:, 0]
        if isinstance(vace_strength, (list, tuple)):  # core's per-context strengths
            vace_strength = vace_strength[0]
        if vace_context is not None:
            expected = (x.shape[0], self.config.vace_in_dim, *x.shape[2:])
            if vace_context.dim() != 5 or tuple(vace_context.shape) != expected:
                raise InvalidInputError(f"vace_context has shape {tuple(vace_context.shape)}; this VACE model expects "
                                        f"{list(expected)} (latent {tuple(x.shape)})")
        self._vace_input = None if vace_context is None else (vace_context, float(vace_strength))
        try:
            return super().forward(x, t, context, clip_fea=clip_fea, y=y, **kwargs)
        finally:
            self._vace_input = None

    def _run_blocks(self, tokens: torch.Tensor, time: TimeConditioning, context: torch.Tensor,
                    rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if self._vace_input is None:
            return super()._run_blocks(tokens, time, context, rope)
        vace_context, strength = self._vace_input
        hints = dict(zip(self.config.vace_layers, self._hints(vace_context, tokens, time, context, rope)))
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, time, context, rope, self.compute_dtype)
            if index in hints:
                tokens = tokens + hints[index] * strength
        return tokens

    def _hints(self, vace_context: torch.Tensor, x: torch.Tensor, time: TimeConditioning, context: torch.Tensor,
               rope: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        """One [B, S, D] fp32 hint per VACE block, from the context and the embedded latent tokens x [B, S, D]."""
        c = self.vace_patch_embedding(vace_context.to(x.device)).flatten(2).transpose(1, 2).float()
        hints = []
        for block in self.vace_blocks:
            c, hint = block.run(c, x, time, context, rope, self.compute_dtype)
            hints.append(hint)
        return hints


@functools.cache
def vace_model_class(base: type[WanDiT] = WanDiT) -> type[WanDiT]:
    """The VACE model built on ``base`` (`WanDiT` or a host adapter subclass); one class per base."""
    if issubclass(base, VaceMixin):
        return base
    return type(f"Vace{base.__name__}", (VaceMixin, base), {"__doc__": f"{base.__name__} with the VACE branch."})


WanVaceDiT = vace_model_class(WanDiT)
