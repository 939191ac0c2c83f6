"""Quantized weights as the loaders deliver them and the linears consume them.

Canonical form (whatever the file layout was): ``<layer>.weight`` holds the low-precision codes ``[out, in]``
(``torch.float8_e4m3fn`` or ``torch.int8``) and ``<layer>.weight_scale`` the fp32 dequantization scale, ``[out, 1]``
per output channel or ``[1, 1]`` per tensor, so that ``W ≈ weight.float() * weight_scale``.
`QuantOps` builds a `QuantLinear` for every layer named in its table; other layers stay float (`ActivationLinear`).
`QuantLinear` runs a native W8A8 GEMM (`kernels.backends`) where the device has one, else dequantizes the
weight (optionally emulating the activation quantization), both as `custom_ops` ops; `QuantOps` also fuses the activation quantization into
the LayerNorm + modulation, affine LayerNorm, T5 RMSNorm and GELU ops that feed quantized linears.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import backends, custom_ops
from .act_quant import (CODE_DTYPES, QuantizedActivation, gelu_tanh_quantized, layer_norm_quantized,
                        norm_modulate_quantized, quantize_rows, rms_norm_quantized, use_triton)
from .capability import native_gemm
from .ops import ATTENTION_BACKENDS, CastLinear, TorchOps

__all__ = ["CODE_DTYPES", "GRANULARITIES", "QuantScheme", "QuantLinear", "QuantOps", "QuantizedActivation"]
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
    """Linear over quantized weight codes (W8A8 with per-token dynamic activation scales).

    State dict: ``weight`` (codes), ``weight_scale`` (fp32), ``bias`` (float, optional).
    Args beyond the shape: ``backend`` ("auto", "dequant", "scaled_mm", "triton", "int_mm"; an unusable choice
    falls back to "dequant" with a warning) and ``emulate_activations`` (on the dequant path, round the activation
    through the same per-token quantization the GPU kernels apply, to predict their numerics on any device).
    Input: a float tensor ``[..., in]`` or a `QuantizedActivation`; output ``[..., out]`` (bf16 on the native
    path, the bias dtype on the dequant path).
    """

    KEEP_IN_FP32_PARAMS = ("weight_scale",)

    def __init__(self, in_features: int, out_features: int, scheme: QuantScheme, bias: bool = True,
                 backend: str = "auto", emulate_activations: bool = False):
        super().__init__()
        backends.check_name(backend)
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        self.backend, self.emulate_activations = backend, emulate_activations
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=scheme.dtype), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(scheme.scale_shape(out_features), dtype=torch.float32),
                                         requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    @property
    def scale(self) -> torch.Tensor:
        """The fp32 scale of the codes now in ``weight`` (a host that swaps in re-quantized codes swaps this too)."""
        return self.weight_scale

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.scale).to(dtype)

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        return self.run(x, self.weight, self.scale, self.bias)

    def run(self, x: torch.Tensor | QuantizedActivation, weight: torch.Tensor, scale: torch.Tensor,
            bias: torch.Tensor | None) -> torch.Tensor:
        """The layer's computation on given codes ``weight`` [out, in], ``scale`` and ``bias`` (the module's own,
        or copies a host streamed to the input's device)."""
        if isinstance(x, QuantizedActivation) and x.codes.dtype != self.scheme.dtype:
            x = x.dequantize()
        if not runs_native(self.scheme, self.backend, x.device):
            return self._dequantized_forward(x, weight, scale, bias)
        quantized = x if isinstance(x, QuantizedActivation) else quantize_rows(x, self.scheme.codes)
        a = quantized.codes.reshape(-1, self.in_features)
        a_scale = quantized.scale.reshape(-1, 1)
        w_scale = scale.reshape(1, -1).expand(1, self.out_features).contiguous()
        out_bias = bias.to(backends.OUT_DTYPE) if bias is not None else None
        out = custom_ops.w8a8_gemm(a, a_scale, weight, w_scale, out_bias, self.backend)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _dequantized_forward(self, x: torch.Tensor | QuantizedActivation, weight: torch.Tensor, scale: torch.Tensor,
                             bias: torch.Tensor | None) -> torch.Tensor:
        if bias is not None:
            dtype = bias.dtype
        else:  # bias-less layers (T5) follow their input's float dtype
            dtype = torch.bfloat16 if isinstance(x, QuantizedActivation) else x.dtype
        if isinstance(x, QuantizedActivation):
            x = x.dequantize(dtype)
        elif self.emulate_activations:
            x = quantize_rows(x, self.scheme.codes).dequantize(dtype)
        return custom_ops.dequant_linear(x, weight, scale, bias, dtype)


# The path of each (codes, backend, device): (native W8A8 GEMM, fused input quantization). Decided once, eagerly,
# so that compiled code reads a constant here instead of tracing device checks (`prepare_paths` fills it ahead of
# `torch.compile`).
_PATHS: dict[tuple[str, str, str, int | None], tuple[bool, bool]] = {}


def _path(scheme: QuantScheme, backend: str, device: torch.device) -> tuple[bool, bool]:
    key = (scheme.codes, backend, device.type, device.index)
    if key not in _PATHS:
        native = _runs_native(scheme, backend, device)
        _PATHS[key] = (native, native and use_triton(device))
    return _PATHS[key]


def prepare_paths(model: nn.Module, devices: Iterable[torch.device]) -> None:
    """Decide the path of every quantized layer of ``model`` on each of ``devices`` now (see `_PATHS`)."""
    for module in model.modules():
        if isinstance(module, (QuantLinear, GeluTanhQuantize)):
            for device in devices:
                _path(module.scheme, module.backend, torch.device(device))


def runs_native(scheme: QuantScheme, backend: str, device: torch.device) -> bool:
    """Whether a layer of ``scheme`` takes the native W8A8 path on ``device`` (else it dequantizes). An explicit
    backend that cannot run there is reported once (`backends.warn_fallback`); its shape limits are checked per
    call by `backends.choose`."""
    return _path(scheme, backend, device)[0]


def _runs_native(scheme: QuantScheme, backend: str, device: torch.device) -> bool:
    if backend == "auto":
        return native_gemm(scheme.codes, device)
    if backend == "dequant":
        return False
    reason = backends.unusable_reason(scheme.codes, backend, device)
    if reason is not None:
        backends.warn_fallback(scheme.codes, backend, reason)
    return reason is None


class ActivationLinear(CastLinear):
    """Float linear that also takes a `QuantizedActivation` (its input may be shared with a quantized sibling,
    e.g. ``k``/``v`` left in float while ``q`` is quantized)."""

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        if isinstance(x, QuantizedActivation):
            x = x.dequantize(self.weight.dtype)
        return super().forward(x)


class GeluTanhQuantize(nn.Module):
    """GELU-tanh that quantizes its output in the same kernel when its consumer runs natively (CUDA + Triton)."""

    def __init__(self, scheme: QuantScheme, backend: str):
        super().__init__()
        self.scheme, self.backend = scheme, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor | QuantizedActivation:
        if fuses_quantization(self.scheme, self.backend, x.device):
            return gelu_tanh_quantized(x, self.scheme.codes)
        return F.gelu(x, approximate="tanh")


def fuses_quantization(scheme: QuantScheme, backend: str, device: torch.device) -> bool:
    """Whether the op producing a ``scheme`` layer's input should emit quantized codes on ``device``."""
    return _path(scheme, backend, device)[1]


class QuantOps(TorchOps):
    """Operations factory that quantizes the layers named in ``layers`` (official names, no ``.weight``).

    ``backend`` and ``emulate_activations`` are passed to every `QuantLinear` (see there). Where a quantized
    linear runs natively on CUDA with Triton installed, the LayerNorm + modulation, the affine LayerNorm, the T5
    RMSNorm and the GELU feeding it quantize their output in the same kernel, except the producers named through
    `float_inputs`. ``ffn_chunk_tokens``: see `TorchOps`.
    """

    def __init__(self, layers: Mapping[str, QuantScheme], backend: str = "auto", emulate_activations: bool = False,
                 attention: str = "auto", ffn_chunk_tokens: int = 0):
        super().__init__(ffn_chunk_tokens)
        backends.check_name(backend)
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend {attention!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
        self.layers = dict(layers)
        self.backend, self.emulate_activations = backend, emulate_activations
        self.attention_backend = attention
        self.float_names: frozenset[str] = frozenset()

    def float_inputs(self, names: Iterable[str]) -> "QuantOps":
        names = self.float_names | frozenset(names)
        if names == self.float_names:
            return self
        ops = copy.copy(self)
        ops.float_names = names
        return ops

    def for_block(self, prefix: str) -> "QuantOps":
        start = len(prefix) + 1
        ops = copy.copy(self)
        ops.layers = {name[start:]: scheme for name, scheme in self.layers.items() if name.startswith(f"{prefix}.")}
        ops.float_names = frozenset(name[start:] for name in self.float_names if name.startswith(f"{prefix}."))
        return ops

    def _fused(self, name: str, device: torch.device) -> QuantScheme | None:
        """The scheme whose codes the producer ``name`` emits on ``device``, or None where it returns float."""
        scheme = self.layers.get(name)
        if scheme is None or name in self.float_names or not fuses_quantization(scheme, self.backend, device):
            return None
        return scheme

    def linear(self, in_features: int, out_features: int, *, name: str, bias: bool = True) -> nn.Module:
        scheme = self.layers.get(name)
        if scheme is None:
            return ActivationLinear(in_features, out_features, bias=bias)
        return QuantLinear(in_features, out_features, scheme, bias=bias, backend=self.backend,
                           emulate_activations=self.emulate_activations)

    def norm_modulate(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                      *, name: str) -> torch.Tensor | QuantizedActivation:
        scheme = self._fused(name, x.device)
        if scheme is None:
            return super().norm_modulate(x, shift, scale, eps, name=name)
        return norm_modulate_quantized(x, shift, scale, eps, scheme.codes)

    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                   *, name: str) -> torch.Tensor | QuantizedActivation:
        scheme = self._fused(name, x.device)
        if scheme is None:
            return super().layer_norm(x, weight, bias, eps, name=name)
        return layer_norm_quantized(x, weight, bias, eps, scheme.codes)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float,
                 *, name: str) -> torch.Tensor | QuantizedActivation:
        scheme = self._fused(name, x.device)
        if scheme is None:
            return super().rms_norm(x, weight, eps, name=name)
        return rms_norm_quantized(x, weight, eps, scheme.codes)

    def gelu_tanh(self, *, name: str) -> nn.Module:
        scheme = self.layers.get(name)
        if scheme is None or name in self.float_names:
            return super().gelu_tanh(name=name)
        return GeluTanhQuantize(scheme, self.backend)
