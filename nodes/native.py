"""Wan Express DiTs as core ComfyUI ``MODEL``s: our `WanDiT` is the ``diffusion_model`` of a core WAN21 / WAN22.

Route (spec comfyui-native.md §1.2): core's own detection reads our state dict (official key names) and picks the
model class, latent format and flow shift; its network is never built (``disable_unet_model_creation``); our module
is attached as ``diffusion_model`` and the whole is wrapped in a plain core ``ModelPatcher``. Core's samplers,
ModelSamplingSD3, conditioning nodes, LoRA loader and memory manager then drive the same `WanDiT` and W8A8 kernels
our own sampler runs. Our leaf linears speak core's weight protocol (``comfy_cast_weights`` / ``weight_function`` /
``convert_weight`` / ``set_weight``), so lowvram streaming works and core LoRA patches land in FP8/INT8 codes as a
dequantize -> add -> re-quantize with a fresh per-row scale, as our own merge does.

Entry points: `NativeOps` (the ops factory to build with), `NativeWanDiT` (the model class), `core_model(dit)`;
`network_of(model)` is what our sampler runs for any core Wan MODEL (ours, or core's own network).
Every use of a core internal is in `_core()` or names one attribute; a moved internal gives `HostChangedError`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WanExpressError
from ..kernels.quantize import codes_with_scale, quantize_weight
from ..kernels.quantized import ActivationLinear, QuantizedActivation, QuantLinear, QuantOps
from ..models import WanConfig, WanDiT


class HostChangedError(WanExpressError):
    """A ComfyUI internal Wan Express relies on is missing: this ComfyUI version is not supported."""


def _core():
    """The core modules used here, imported on demand (the library runs without ComfyUI)."""
    try:
        import comfy.model_detection
        import comfy.model_management
        import comfy.model_patcher
        import comfy.ops
    except ImportError as error:
        raise HostChangedError(f"ComfyUI's model modules could not be imported ({error}); Wan Express needs "
                               "ComfyUI 0.3.64 or newer") from None
    return comfy


class _CoreWeights:
    """Core's leaf-op protocol: the patcher sets ``weight_function`` / ``bias_function`` per instance (lowvram
    patches) and ``comfy_cast_weights`` (stream weights to the input's device at every call)."""

    comfy_cast_weights = False
    weight_function: list = []
    bias_function: list = []

    def _streams(self) -> bool:
        return bool(self.comfy_cast_weights or self.weight_function or self.bias_function)

    def _cast(self, device: torch.device, dtype: torch.dtype):
        bias_dtype = self.bias.dtype if self.bias is not None else None
        return _core().ops.cast_bias_weight(self, None, dtype=dtype, device=device, bias_dtype=bias_dtype)


def _device_of(x: torch.Tensor | QuantizedActivation) -> torch.device:
    return x.codes.device if isinstance(x, QuantizedActivation) else x.device


class NativeQuantLinear(_CoreWeights, QuantLinear):
    """`QuantLinear` under core's patcher.

    A full-load LoRA merge (``set_weight``) re-quantizes the merged float weight with a fresh per-row scale that
    rides on the new ``weight`` Parameter (``patched_scale``): core's unpatch puts the backed-up codes back as a new
    Parameter without it, so the stored ``weight_scale`` is in force again. A lowvram patch hands the merged float
    weight to the call, which quantizes it the same way, so both paths give the same codes. Only core's in-place
    updates keep the stored scale (rounded and saturated; core's plain cast would wrap int8).
    """

    @property
    def scale(self) -> torch.Tensor:
        return getattr(self.weight, "patched_scale", self.weight_scale)

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        if not self._streams():
            return self.run(x, self.weight, self.scale.to(self.weight.device), self.bias)
        device = _device_of(x)
        weight, bias = self._cast(device, self.weight.dtype)
        if weight.dtype.is_floating_point and weight.dtype != self.scheme.dtype:  # a lowvram patch merged a LoRA
            codes, scale = quantize_weight(weight.float(), self.scheme)
            return self.run(x, codes, scale, bias)
        return self.run(x, weight, self.weight_scale.to(device), bias)

    def convert_weight(self, weight: torch.Tensor, inplace: bool = False, **kwargs) -> torch.Tensor:
        scale = self.scale.to(weight.device, weight.dtype)
        return weight.mul_(scale) if inplace else weight * scale

    def set_weight(self, weight: torch.Tensor, inplace_update: bool = False, seed=None, return_weight: bool = False,
                   **kwargs):
        if return_weight:
            return weight
        if inplace_update:
            self.weight.data.copy_(codes_with_scale(weight, self.weight_scale.to(weight.device), self.scheme))
            return None
        codes, scale = quantize_weight(weight, self.scheme)
        param = nn.Parameter(codes, requires_grad=False)
        param.patched_scale = scale
        self.weight = param
        return None


class NativeLinear(_CoreWeights, ActivationLinear):
    """Float linear under core's patcher (LoRA patches are core's plain float merge)."""

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        if not self._streams():
            return super().forward(x)
        if isinstance(x, QuantizedActivation):
            x = x.dequantize(self.weight.dtype)
        weight, bias = self._cast(x.device, self.weight.dtype)
        return F.linear(x.to(weight.dtype), weight, bias)


class NativeOps(QuantOps):
    """`QuantOps` whose linears speak core's weight protocol (streamable, patchable)."""

    def linear(self, in_features: int, out_features: int, *, name: str, bias: bool = True) -> nn.Module:
        scheme = self.layers.get(name)
        if scheme is None:
            return NativeLinear(in_features, out_features, bias=bias)
        return NativeQuantLinear(in_features, out_features, scheme, bias=bias, backend=self.backend,
                                 emulate_activations=self.emulate_activations)


class NativeWanDiT(WanDiT):
    """`WanDiT` that also takes core's ``diffusion_model`` call; the same parameters and names (no wrapper).

    Core calls ``model(x, t, context=..., clip_fea=..., transformer_options=..., **conds)`` with the image
    conditioning already concatenated onto ``x`` (``c_concat``), ``t = σ·1000`` ([B], or [B, frames] for Wan2.2's
    per-frame timesteps) and the context padded to at least 512 tokens; our sampler calls it like a `WanDiT`.
    """

    @property
    def dtype(self) -> torch.dtype:
        """What core casts inputs to (`BaseModel.get_dtype`): fp32, the latent dtype our forward expects; the
        matmuls still run in `compute_dtype`."""
        return torch.float32

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, clip_fea: torch.Tensor | None = None,
                y: torch.Tensor | None = None, *, transformer_options: dict | None = None, control=None,
                **unsupported) -> torch.Tensor:
        given = sorted(key for key, value in unsupported.items() if value is not None and key != "denoise_mask")
        if control is not None or given:
            raise WanExpressError(f"this Wan Express model does not take {', '.join(given or ['ControlNet'])} "
                                  "conditioning; remove that node from the graph or use core's Wan model loader")
        self._follow(x.device)
        height, width = x.shape[-2:]
        pad_h, pad_w = height % 2, width % 2
        if pad_h or pad_w:  # core pads odd latents to the patch size and crops back
            x = F.pad(x, (0, pad_w, 0, pad_h))
            y = None if y is None else F.pad(y, (0, pad_w, 0, pad_h))
        if t.dim() == 2 and t.shape[1] == x.shape[2]:  # per latent frame -> per token (frame-major)
            t = t.repeat_interleave(((height + pad_h) // 2) * ((width + pad_w) // 2), dim=1)
        cfg = self.config
        if context.shape[1] > cfg.text_len:
            context = context[:, :cfg.text_len]
        if not cfg.clip_branch:
            clip_fea = None  # core's Wan ignores CLIP features on models without a CLIP branch too
        velocity = super().forward(x, t, context, clip_fea=clip_fea, y=y)
        return velocity[..., :height, :width]

    def _follow(self, device: torch.device) -> None:
        """Move what core's partial loads leave behind (parameters of modules without the weight protocol, such as
        ``blocks.N.modulation``) to the input's device; they are small. The modules that own such tensors are listed
        once; their tensors are read at every call, since patches swap them (LoRA merges, object patches)."""
        if not hasattr(self, "_unstreamed"):
            self._unstreamed = [module for module in self.modules() if not isinstance(module, _CoreWeights)
                                and (module._parameters or module._buffers)]
        for module in self._unstreamed:
            for tensor in (*module._parameters.values(), *module._buffers.values()):
                if tensor is not None and tensor.device != device:
                    tensor.data = tensor.data.to(device)


def core_model(dit: NativeWanDiT):
    """A core ``ModelPatcher`` around a core WAN21 / WAN22 whose ``diffusion_model`` is ``dit``.

    ``dit`` stays where it is (build it on the CPU: core moves it to the GPU when a sampler loads it and back when
    memory is needed). Raises `HostChangedError` when core's detection or model classes moved.
    """
    comfy = _core()
    state = dit.state_dict()  # detection reads its keys and shapes
    try:
        unet_config = comfy.model_detection.detect_unet_config(state, "")
        model_config = comfy.model_detection.model_config_from_unet_config(unet_config, state)
        if model_config is None:
            raise HostChangedError("ComfyUI did not recognise the Wan DiT's tensors as a Wan model")
        model_config.set_inference_dtype(dit.compute_dtype, torch.float32)
        model_config.unet_config["disable_unet_model_creation"] = True
        base = model_config.get_model(state, "")
        base.diffusion_model = dit
        management = comfy.model_management
        return comfy.model_patcher.ModelPatcher(base, load_device=management.get_torch_device(),
                                                offload_device=management.unet_offload_device())
    except (AttributeError, TypeError, KeyError) as error:
        raise HostChangedError(f"this ComfyUI version builds models differently ({type(error).__name__}: {error}); "
                               "Wan Express supports ComfyUI 0.3.64 and the versions tested with it") from None


def wan_dit_of(model) -> WanDiT | None:
    """Our `WanDiT` inside a core MODEL, or None for another network (e.g. core's own Wan from UNETLoader)."""
    network = getattr(getattr(model, "model", None), "diffusion_model", None)
    return network if isinstance(network, WanDiT) else None


class CoreNetwork(nn.Module):
    """A core MODEL's own Wan network (core's UNETLoader) called like a `WanDiT`, so our sampler runs it too.

    ``config`` is read from its official-named state dict; inputs are cast to the model's dtype and image
    conditioning is concatenated the way core's `_apply_model` does.
    """

    def __init__(self, model):
        super().__init__()
        self.base = model.model
        try:
            shapes = {key: tuple(tensor.shape) for key, tensor in self.base.diffusion_model.state_dict().items()}
            self.config = WanConfig.infer(shapes, source="the connected model")
        except WanExpressError as error:
            raise WanExpressError(f"the connected MODEL is not a Wan DiT the Wan Express sampler can drive ({error})"
                                  ) from None

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, clip_fea: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            x = torch.cat([x, y.to(x)], dim=1)
        dtype = self.base.manual_cast_dtype or self.base.get_dtype()
        if t.dim() == 2:  # per token -> per latent frame, core's Wan2.2 convention
            t = t.view(t.shape[0], x.shape[2], -1)[..., 0]
        extra = {} if clip_fea is None else {"clip_fea": clip_fea.to(dtype)}
        return self.base.diffusion_model(x.to(dtype), t.float(), context=context.to(dtype), transformer_options={},
                                         **extra).float()


def network_of(model) -> nn.Module:
    """What our sampler calls for a core MODEL: our `WanDiT` itself, or an adapter of core's network (a `WanDiT`
    given directly, as library callers outside ComfyUI do, is used as it is)."""
    if isinstance(model, WanDiT):
        return model
    dit = wan_dit_of(model)
    return dit if dit is not None else CoreNetwork(model)
