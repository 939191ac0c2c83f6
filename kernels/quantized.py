"""Quantized weights as the loaders deliver them and the linears consume them.

Canonical form (whatever the file layout was): ``<layer>.weight`` holds the low-precision codes ``[out, in]``
(``torch.float8_e4m3fn`` or ``torch.int8``) and ``<layer>.weight_scale`` the fp32 dequantization scale, ``[out, 1]``
per output channel or ``[1, 1]`` per tensor, so that ``W ≈ weight.float() * weight_scale``.
`QuantOps` builds a `QuantLinear` for every layer named in its table; other layers stay `CastLinear`.
This module holds the reference (dequantizing) forward; fast GEMM backends live beside it.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .ops import TorchOps

CODE_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "int8": torch.int8}
GRANULARITIES = ("channel", "tensor")


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    """How one layer's weight is stored.

    Attributes:
        codes: ``"fp8_e4m3"`` or ``"int8"``.
        granularity: ``"channel"`` (one scale per output row, ``[out, 1]``) or ``"tensor"`` (``[1, 1]``).
    """

    codes: str
    granularity: str = "channel"

    def __post_init__(self) -> None:
        if self.codes not in CODE_DTYPES or self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown quantization scheme {self.codes}/{self.granularity}")

    @property
    def dtype(self) -> torch.dtype:
        return CODE_DTYPES[self.codes]

    def scale_shape(self, out_features: int) -> tuple[int, int]:
        return (out_features, 1) if self.granularity == "channel" else (1, 1)


class QuantLinear(nn.Module):
    """Linear over quantized weight codes; this reference forward dequantizes and runs a float matmul.

    State dict: ``weight`` (codes), ``weight_scale`` (fp32), ``bias`` (float, optional).
    """

    KEEP_IN_FP32_PARAMS = ("weight_scale",)

    def __init__(self, in_features: int, out_features: int, scheme: QuantScheme, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=scheme.dtype), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(scheme.scale_shape(out_features), dtype=torch.float32),
                                         requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.weight_scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.bias.dtype if self.bias is not None else torch.bfloat16
        return F.linear(x.to(dtype), self.dequantized_weight(dtype), self.bias)


class QuantOps(TorchOps):
    """Operations factory that quantizes the layers named in ``layers`` (official names, no ``.weight``)."""

    def __init__(self, layers: Mapping[str, QuantScheme]):
        self.layers = dict(layers)

    def linear(self, in_features: int, out_features: int, *, name: str, bias: bool = True) -> nn.Module:
        scheme = self.layers.get(name)
        if scheme is None:
            return super().linear(in_features, out_features, name=name, bias=bias)
        return QuantLinear(in_features, out_features, scheme, bias=bias)
