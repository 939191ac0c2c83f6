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
import logging
from typing import Callable, Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

_ATTRIBUTE = "_wan_express_residency"


def pinning_available() -> bool:
    """Page-locked host memory needs a CUDA driver."""
    return torch.cuda.is_available()


def host_copies(tensors: list[torch.Tensor], pin: bool) -> tuple[list[torch.Tensor], "PinnedArena | None"]:
    """CPU copies of ``tensors`` to keep for the model's lifetime, and the arena to keep with them. With ``pin``
    they are views into one page-locked buffer (`PinnedArena`); without, a CPU tensor is kept as it is (no second
    copy exists). Where the system refuses to lock that much memory, the copies stay pageable (a warning says so
    once)."""
    if pin and tensors:
        try:
            arena = PinnedArena(tensors)
            return arena.views, arena
        except RuntimeError as error:  # page-locked memory is a limited resource on some systems
            _warn_once(f"could not pin host memory for the model weights ({error}); keeping pageable copies, so "
                       "loads to the GPU are synchronous")
    return [tensor if tensor.device.type == "cpu" else tensor.to("cpu") for tensor in tensors], None


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


class PinnedArena:
    """Copies of some tensors packed into one CPU buffer that is page-locked in place (``cudaHostRegister``).

    Not `Tensor.pin_memory()`: PyTorch's pinned allocator rounds every allocation up to a power of two (a 71 MB
    FFN weight takes 128 MB), which would add up to ~half a model of locked RAM. Views keep the buffer alive; the
    arena unregisters it when it dies (it belongs to the model's residency), before the memory can be freed.
    """

    PAGE = 4096
    ALIGN = 256  # every view starts on a 256-byte boundary (any dtype view is legal, copies stay aligned)

    def __init__(self, tensors: list[torch.Tensor]):
        sizes = [tensor.numel() * tensor.element_size() for tensor in tensors]
        offsets, total = [], 0
        for size in sizes:
            offsets.append(total)
            total += -(-size // self.ALIGN) * self.ALIGN
        length = max(-(-total // self.PAGE) * self.PAGE, self.PAGE)
        # The whole storage is registered: `Tensor.is_pinned()` asks CUDA about the storage's first byte, and a
        # buffer that started past it would read as pageable (then every copy from it is synchronous).
        self.buffer = torch.empty(length, dtype=torch.uint8)
        code = int(torch.cuda.cudart().cudaHostRegister(self.buffer.data_ptr(), length, 0))
        if code != 0:
            raise RuntimeError(f"cudaHostRegister of {length / 2 ** 20:.0f} MB failed with CUDA error {code}")
        self.registered = True
        self.views = []
        for tensor, offset, size in zip(tensors, offsets, sizes):
            view = self.buffer[offset:offset + size].view(tensor.dtype).view(tensor.shape)
            self.views.append(view.copy_(tensor))

    def __del__(self):
        if getattr(self, "registered", False):
            try:
                torch.cuda.cudart().cudaHostUnregister(self.buffer.data_ptr())
            except Exception:  # interpreter shutdown: nothing left to protect
                pass


@dataclasses.dataclass
class _Slot:
    """One parameter or buffer of a module, its host copy, and the signature of the tensor last put there (to see
    what changed behind our back: a replaced tensor, or an in-place edit)."""

    module: nn.Module
    name: str
    parameter: bool
    host: torch.Tensor
    arena: PinnedArena | None = None  # keeps the host copy's memory page-locked
    mark: tuple = ()

    def current(self) -> torch.Tensor | None:
        table = self.module._parameters if self.parameter else self.module._buffers
        return table.get(self.name)

    def signature(self) -> tuple:
        tensor = self.current()
        if tensor is None:
            return ()
        # in-place edits through ``tensor.data`` bump no counter we can see, those through the tensor do; tensors
        # made under inference mode (ComfyUI runs nodes in it) have no counter at all
        return id(tensor), tensor.data_ptr(), 0 if tensor.is_inference() else tensor._version

    def point_at(self, tensor: torch.Tensor) -> None:
        if self.parameter:
            param = self.module._parameters[self.name]
            if torch._has_compatible_shallow_copy_type(param, tensor):
                param.data = tensor  # the Parameter object (and what hangs on it) stays
            else:  # e.g. the meta device, as nn.Module._apply does: a new Parameter with the old one's attributes
                replaced = nn.Parameter(tensor, requires_grad=param.requires_grad)
                replaced.__dict__.update(param.__dict__)
                self.module._parameters[self.name] = replaced
        else:
            self.module._buffers[self.name] = tensor
        self.mark = self.signature()

    def changed(self) -> bool:
        return self.signature() != self.mark

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is the host copy's memory (whatever Parameter object wraps it now)."""
        host = self.host
        return (tensor.device.type == "cpu" and tensor.data_ptr() == host.data_ptr() and tensor.dtype == host.dtype
                and tensor.shape == host.shape)


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
        seen, new = {}, []
        for module in self.modules():
            for table, parameter in ((module._parameters, True), (module._buffers, False)):
                for key, tensor in table.items():
                    if tensor is None:
                        continue
                    slot = self.slots.get((id(module), key))
                    if slot is not None and slot.changed() and slot.holds(tensor):
                        slot.point_at(slot.host)  # the host copy under a new Parameter, or edited in place there
                    if slot is None or slot.changed():
                        new.append((module, key, parameter, tensor))
                    else:
                        seen[(id(module), key)] = slot
        copies, arena = host_copies([tensor.data for *_, tensor in new], self.pin)
        for (module, key, parameter, _), host in zip(new, copies):
            slot = seen[(id(module), key)] = _Slot(module, key, parameter, host, arena)
            slot.mark = slot.signature()
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


_MOVES = "_wan_express_host_copies"


def keep_host_copies(model: nn.Module, pin: bool | None = None) -> nn.Module:
    """Make ``model.to(...)`` (and any ``.to`` of its modules, as a host's memory manager calls on leaf modules
    during partial loads) use persistent host copies: moving a tensor to the CPU points it at its copy instead of
    copying it back, and moving it to a device copies from the pinned copy with ``non_blocking``.

    A tensor replaced or edited in place since it was last moved (a host's LoRA patch) is taken as it is: on the CPU
    it becomes the new host copy; on a device it moves the ordinary way (and becomes the host copy once on the
    CPU); a restored original (the same tensor object, unedited) takes the fast path again. Dtype conversions move
    the ordinary way. Not seen: edits made through ``param.data`` (no version counter records them) and tensors of
    modules added later. Idempotent; returns ``model``.
    """
    pin = pinning_available() if pin is None else pin
    for module in model.modules():
        if _MOVES in module.__dict__ or not (module._parameters or module._buffers):
            continue
        owned = [(parameter, name, tensor) for table, parameter in ((module._parameters, True),
                                                                   (module._buffers, False))
                 for name, tensor in table.items() if tensor is not None]
        copies, arena = host_copies([tensor.data for *_, tensor in owned], pin)
        slots = {}
        for (parameter, name, tensor), host in zip(owned, copies):
            slot = slots[(parameter, name)] = _Slot(module, name, parameter, host, arena)
            if tensor.device.type == "cpu":
                slot.point_at(host)
            else:  # on a device now: the device copy stays in use, the host copy waits
                slot.mark = slot.signature()
        module.__dict__[_MOVES] = (slots, pin)
        module.__dict__["_apply"] = _host_aware_apply.__get__(module)
    return model


def _host_aware_apply(module: nn.Module, fn, recurse: bool = True):
    """`nn.Module._apply` for a module with host copies (see `keep_host_copies`)."""
    slots, pin = module.__dict__[_MOVES]
    if recurse:
        for child in module.children():
            child._apply(fn)
    for table, parameter in ((module._parameters, True), (module._buffers, False)):
        for name, tensor in list(table.items()):
            if tensor is None:
                continue
            key = (parameter, name)
            target = fn(torch.empty(0, dtype=tensor.dtype))  # where and as what fn puts a tensor
            slot = slots.get(key)
            if slot is not None and slot.changed() and slot.holds(tensor):
                slot.point_at(slot.host)  # its host memory under a new Parameter (a host's unpatch) or edited there
            elif (slot is None or slot.changed()) and tensor.device.type == "cpu":
                slots[key] = slot = _adopt(module, name, parameter, tensor, pin)  # new, or replaced on the host
            if slot is not None and not slot.changed() and target.dtype == tensor.dtype:
                if target.device.type == "cpu":
                    slot.point_at(slot.host)  # a device copy is dropped, nothing is copied back
                elif target.device != tensor.device:
                    slot.point_at(torch.empty(tensor.shape, dtype=tensor.dtype, device=target.device).copy_(
                        slot.host, non_blocking=slot.host.is_pinned()))
                continue
            moved = fn(tensor.data)  # replaced or edited on a device, or a dtype change: the ordinary way
            if parameter:
                tensor.data = moved
            else:
                table[name] = moved
            if moved.device.type == "cpu" and moved.dtype == tensor.dtype:
                slots[key] = _adopt(module, name, parameter, table[name], pin)
    return module


def _adopt(module: nn.Module, name: str, parameter: bool, tensor: torch.Tensor, pin: bool) -> _Slot:
    """A CPU tensor's value as the new host copy (pinned where asked; no copy when it already is one)."""
    (host,), arena = host_copies([tensor.data], pin)
    slot = _Slot(module, name, parameter, host, arena)
    slot.point_at(host)
    return slot
