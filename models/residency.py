"""Where a model's weights live: a persistent host copy of every tensor, made once at load, and device copies
made from it on demand.

A DiT's weights never change after load, so offloading needs no copy back: `WeightGroup.offload` points the
tensors at their host copy and the device copy is simply dropped. Loading copies the host copy (pinned when CUDA is
there) into freshly allocated device tensors with ``non_blocking`` on a side stream; the compute stream waits on an
event recorded after the copies (`WeightGroup.ready`), so a load started early (`prefetch`) overlaps the compute
before it. On a CPU "device" the same machinery runs with plain copies, which is how the CPU tests check it.
Entry point: `ModelResidency.of(model)` (one per model, kept on it): the non-block tensors and one group per block.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch
from torch import nn

_ATTRIBUTE = "_wan_express_residency"


def pinning_available() -> bool:
    """Page-locked host memory needs a CUDA driver."""
    return torch.cuda.is_available()


def host_copy(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    """A CPU copy of ``tensor`` to keep for the model's lifetime (page-locked with ``pin``). A CPU tensor that
    needs no pinning is kept as it is: no second copy of the weights exists."""
    if tensor.device.type == "cpu" and not pin:
        return tensor
    if tensor.device.type == "cpu":
        return tensor.pin_memory()
    copy = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pin)
    return copy.copy_(tensor)


@dataclasses.dataclass
class _Slot:
    """One parameter or buffer of a module, its host copy, and the signature of the tensor last put there (to see
    what changed behind our back: a replaced tensor, or an in-place edit)."""

    module: nn.Module
    name: str
    parameter: bool
    host: torch.Tensor
    mark: tuple = ()

    def current(self) -> torch.Tensor | None:
        table = self.module._parameters if self.parameter else self.module._buffers
        return table.get(self.name)

    def signature(self) -> tuple:
        tensor = self.current()
        if tensor is None:
            return ()
        own = tensor._version if self.parameter else 0
        return id(tensor), tensor.data_ptr(), own, tensor.data._version

    def point_at(self, tensor: torch.Tensor) -> None:
        if self.parameter:
            self.module._parameters[self.name].data = tensor  # the Parameter object (and what hangs on it) stays
        else:
            self.module._buffers[self.name] = tensor
        self.mark = self.signature()

    def changed(self) -> bool:
        return self.signature() != self.mark


class WeightGroup:
    """The tensors owned by the modules ``modules()`` lists (one block, or the rest of a model), with host copies.

    States: ``"host"`` (tensors are the host copies), ``"loading"`` (device copies in flight), ``"device"``. The
    modules are listed again at every move, so tensors added later (a LoRA's side branches) or replaced (a merge)
    get their host copy then: a new tensor's value is the truth wherever it is, and an in-place edit of a device
    copy is copied back on offload rather than lost.
    """

    def __init__(self, name: str, modules: Callable[[], Iterable[nn.Module]], pin: bool):
        self.name, self.modules, self.pin = name, modules, pin
        self.slots: dict[tuple[int, str], _Slot] = {}
        self.state = "host"
        self.device: torch.device | None = None
        self._event = None
        self._loaded: list[torch.Tensor] = []
        self._sync()
        for slot in self.slots.values():  # the tensors the model was built with are dropped now
            slot.point_at(slot.host)

    @property
    def nbytes(self) -> int:
        return sum(slot.host.numel() * slot.host.element_size() for slot in self.slots.values())

    def _sync(self) -> None:
        """Take in tensors that are new or changed since the last move (their current value is kept)."""
        seen = {}
        for module in self.modules():
            for table, parameter in ((module._parameters, True), (module._buffers, False)):
                for key, tensor in table.items():
                    if tensor is None:
                        continue
                    slot = self.slots.get((id(module), key))
                    if slot is None or slot.changed():
                        slot = _Slot(module, key, parameter, host_copy(tensor.data, self.pin))
                        slot.mark = slot.signature()
                    seen[(id(module), key)] = slot
        self.slots = seen

    def offload(self) -> None:
        """Point every tensor at its host copy; the device copies are freed once nothing uses them."""
        if self.state != "host":
            self._sync()
        for slot in self.slots.values():
            slot.point_at(slot.host)
        self.state, self.device, self._event, self._loaded = "host", None, None, []

    def prefetch(self, device: torch.device, stream=None) -> None:
        """Start copying to ``device`` (on ``stream``, a side CUDA stream, without blocking the host); no-op when
        the group is already there or on its way."""
        device = torch.device(device)
        if self.state != "host":
            if self.device == device:
                return
            self.offload()
        self._sync()
        slots = list(self.slots.values())
        if device.type == "cuda":
            with torch.cuda.stream(stream):
                loaded = [torch.empty(slot.host.shape, dtype=slot.host.dtype, device=device).copy_(
                    slot.host, non_blocking=True) for slot in slots]
                self._event = torch.cuda.Event()
                self._event.record(stream)
        else:
            loaded = [slot.host.clone() if device.type == "cpu" else slot.host.to(device) for slot in slots]
        for slot, tensor in zip(slots, loaded):
            slot.point_at(tensor)
        self._loaded = loaded
        self.state, self.device = "loading", device

    def ready(self, device: torch.device, stream=None) -> None:
        """Make the group usable on the current stream of ``device``: start the copy if needed, then have the
        current stream wait for it (the host does not wait)."""
        self.prefetch(device, stream)
        if self.state == "device":
            return
        if self._event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(self._event)
            for tensor in self._loaded:  # freed later only once the compute stream is past its last use
                tensor.record_stream(current)
        self.state, self._event, self._loaded = "device", None, []


class ModelResidency:
    """Host copies of a model, as the groups streaming and expert switching move: ``"rest"`` (everything outside
    the blocks: embeddings, head, modulation tables) and ``"blocks.<i>"`` per transformer block, in run order.

    Build with `of(model)`: the groups are made once and kept on the model (weights never change after load). A
    new model starts with its tensors on the host copies; call `load` or `ready` before running it.
    """

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, pin: bool | None = None):
        pin = pinning_available() if pin is None else pin
        self.rest = WeightGroup("rest", lambda: _outside(model, blocks), pin)
        self.blocks = [WeightGroup(f"blocks.{index}", block.modules, pin) for index, block in enumerate(blocks)]
        self.block_modules = list(blocks)
        self.pinned = pin
        self._streams: dict[torch.device, object] = {}

    @classmethod
    def of(cls, model: nn.Module, pin: bool | None = None) -> "ModelResidency":
        """The residency of a `WanDiT`-like model (``model.blocks``), made on first use."""
        residency = model.__dict__.get(_ATTRIBUTE)
        if residency is None:
            residency = cls(model, model.blocks, pin)
            model.__dict__[_ATTRIBUTE] = residency
        return residency

    @property
    def groups(self) -> list[WeightGroup]:
        return [self.rest, *self.blocks]

    @property
    def nbytes(self) -> int:
        return sum(group.nbytes for group in self.groups)

    def device_bytes(self) -> int:
        """Bytes of the groups on (or on their way to) a device."""
        return sum(group.nbytes for group in self.groups if group.state != "host")

    def stream(self, device: torch.device):
        """The side stream host-to-device copies of ``device`` run on (None off CUDA)."""
        device = torch.device(device)
        if device.type != "cuda":
            return None
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]

    def prefetch(self, device: torch.device, groups: Iterable[WeightGroup] | None = None) -> None:
        """Start loading ``groups`` (default: all, in run order) onto ``device``."""
        for group in self.groups if groups is None else groups:
            group.prefetch(device, self.stream(device))

    def ready(self, device: torch.device, groups: Iterable[WeightGroup] | None = None) -> None:
        """Make ``groups`` (default: all) usable by the next kernels on ``device``."""
        for group in self.groups if groups is None else groups:
            group.ready(device, self.stream(device))

    def offload(self) -> None:
        """Drop every device copy (the model then runs nowhere until `ready`)."""
        for group in self.groups:
            group.offload()


def _outside(model: nn.Module, blocks: nn.Module) -> Iterable[nn.Module]:
    """``model`` and its modules, without ``blocks`` and what is inside it."""
    yield model
    for child in model.children():
        if child is not blocks:
            yield from _outside(child, blocks)


def residency_of(model: nn.Module) -> ModelResidency | None:
    """The residency made for ``model``, or None."""
    return model.__dict__.get(_ATTRIBUTE)
