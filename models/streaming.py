"""Block streaming: run a DiT whose weights exceed a VRAM budget by keeping some blocks resident and copying the
others in just ahead of their turn.

`plan_streaming(budget, block_bytes, rest_bytes, prefetch)` is the pure schedule: which blocks stay resident and how
many streamed blocks are copied ahead (the prefetch distance), within the budget. `stream_blocks(model, budget,
device)` drives it with forward hooks (`BlockStreamer`, no model edit): before block i runs it is made ready and
the next ``prefetch`` streamed blocks start copying on the side stream; after a streamed block runs its device copy
is dropped. The last blocks of a forward prefetch the first streamed blocks of the next one (weights never change).
Models sharing a `WeightPool` (a Wan2.2 pair) share the budget: running one drops the other's device copies when
both do not fit, and `prefetch_weights` loads the next one ahead of an expert switch.

Inside ComfyUI this is not used: core's memory manager owns placement, and its partial loading already streams
(spec comfyui-native.md §2.3): leaf modules over its budget stay on the CPU with ``comfy_cast_weights`` and our
native linears fetch their weights per call through ``cast_bias_weight`` (on core's offload stream), without a
look-ahead. What we add there, for the experts our sampler switches (`nodes.sampler_node.expert_hook`), is
`residency.keep_host_copies`: their CPU weights are pinned, so core's copies are truly asynchronous, and core's
offload drops GPU copies instead of copying them back.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from ..errors import InvalidInputError
from .residency import ModelResidency

GIB = 1024 ** 3
DEFAULT_PREFETCH = 2
_STREAMER = "_wan_express_streamer"


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """Attributes:
        resident: blocks kept on the device between forwards.
        streamed: blocks copied in every forward, in run order.
        prefetch: streamed blocks copied ahead of the running one (0: each is copied when its turn comes).
        peak_bytes: the most weight bytes on the device at any time under this plan.
    """

    resident: tuple[int, ...]
    streamed: tuple[int, ...]
    prefetch: int
    peak_bytes: int

    @property
    def streams(self) -> bool:
        return bool(self.streamed)

    def ahead(self, block: int) -> list[int]:
        """The streamed blocks to start copying when ``block`` starts: the next ``prefetch`` streamed blocks after
        it, wrapping into the next forward."""
        if not self.streamed or not self.prefetch:
            return []
        following = [index for index in self.streamed if index > block] + [index for index in self.streamed
                                                                          if index <= block]
        return following[:min(self.prefetch, len(self.streamed) - (block in self.streamed))]


def plan_streaming(budget: int | None, block_bytes: Sequence[int], rest_bytes: int,
                   prefetch: int = DEFAULT_PREFETCH, what: str = "the model") -> StreamPlan:
    """Which blocks stay resident under a weight budget of ``budget`` bytes (None: no limit).

    The non-block weights (``rest_bytes``) always stay. While a streamed block runs, it and the ``prefetch``
    streamed blocks after it are on the device, so the plan reserves ``prefetch + 1`` of the largest streamed block
    and keeps as many blocks resident as the remainder holds; the prefetch distance shrinks (to 0) before a budget
    is refused. Resident blocks are spread evenly, so every copy has resident blocks' compute to hide behind.

    Raises:
        InvalidInputError: the budget cannot hold the non-block weights plus one block.
    """
    count = len(block_bytes)
    total = rest_bytes + sum(block_bytes)
    if budget is None or budget >= total:
        return StreamPlan(tuple(range(count)), (), 0, total)
    largest = max(block_bytes)
    for distance in range(min(prefetch, count - 1), -1, -1):
        room = budget - rest_bytes - (distance + 1) * largest
        if room < 0:
            continue
        keep = _most_resident(block_bytes, room)
        streamed = _spread(count, count - keep)
        resident = tuple(index for index in range(count) if index not in streamed)
        in_flight = (distance + 1) * max(block_bytes[index] for index in streamed)
        peak = rest_bytes + sum(block_bytes[index] for index in resident) + in_flight
        if peak <= budget:
            return StreamPlan(resident, streamed, min(distance, len(streamed) - 1), peak)
    raise InvalidInputError(
        f"a weight budget of {budget / GIB:.2f} GB cannot run {what}: its non-block weights take "
        f"{rest_bytes / GIB:.2f} GB and one block {largest / GIB:.2f} GB; give it at least "
        f"{(rest_bytes + largest) / GIB + 0.01:.2f} GB, or use a quantized (fp8/int8) model")


def _most_resident(block_bytes: Sequence[int], room: int) -> int:
    """How many blocks fit in ``room`` bytes (counting the largest first, so any choice of that many fits)."""
    used = keep = 0
    for size in sorted(block_bytes, reverse=True):
        if used + size > room:
            break
        used, keep = used + size, keep + 1
    return min(keep, len(block_bytes) - 1)


def _spread(count: int, streamed: int) -> tuple[int, ...]:
    """``streamed`` block indices spread evenly over ``count`` blocks (the first one among them)."""
    return tuple(sorted({(index * count) // streamed for index in range(streamed)}))


class WeightPool:
    """Models that share one weight budget on one device (the two experts of a Wan2.2 pair): when one starts a
    forward, the others' device copies are dropped if both would not fit (their host copies stay), and
    `prefetch` loads the next model's first tensors into whatever room the running one leaves."""

    def __init__(self, budget_bytes: int | None):
        self.budget = budget_bytes
        self.members: list[BlockStreamer] = []

    def device_bytes(self) -> int:
        return sum(member.residency.device_bytes() for member in self.members)

    def activate(self, streamer: "BlockStreamer") -> None:
        if self.budget is None:
            return
        others = [member for member in self.members if member is not streamer]
        if streamer.plan.peak_bytes + sum(m.residency.device_bytes() for m in others) > self.budget:
            for member in others:
                member.residency.offload()

    def prefetch(self, streamer: "BlockStreamer") -> None:
        """Start loading ``streamer``'s model in run order while it fits next to what is on the device."""
        room = None if self.budget is None else self.budget - self.device_bytes()
        for group in streamer.warm_groups():
            if group.state != "host":
                continue
            if room is not None:
                if group.nbytes > room:
                    break
                room -= group.nbytes
            streamer.note("prefetch", group.name)
            group.prefetch(streamer.device, streamer.residency.stream(streamer.device))


class BlockStreamer:
    """Runs ``plan`` on a model's blocks through forward hooks, with the model's `ModelResidency`.

    Before a forward the non-block weights are made ready and the resident blocks (plus the first streamed ones)
    start copying in run order, so a model coming back after an expert switch loads while it computes; each block
    waits only for its own copy. ``trace``, when a list, receives ``("ready" | "prefetch" | "drop", group name)`` in
    the order they happen (what the tests compare with the plan). `remove` takes the hooks off.
    """

    def __init__(self, model: torch.nn.Module, plan: StreamPlan, device: torch.device | str,
                 pool: WeightPool | None = None, trace: list | None = None):
        self.model, self.plan, self.device, self.trace = model, plan, torch.device(device), trace
        self.residency = ModelResidency.of(model)
        self.pool = pool if pool is not None else WeightPool(None)
        self.pool.members.append(self)
        self._streamed = set(plan.streamed)
        # the hooks move memory between streams: torch.compile runs them as they are, outside its graphs
        outside = torch.compiler.disable
        self._handles = [model.register_forward_pre_hook(outside(self._before_forward))]
        for index, block in enumerate(self.residency.block_modules):
            self._handles.append(block.register_forward_pre_hook(outside(self._before_block(index))))
            if index in self._streamed:
                self._handles.append(block.register_forward_hook(outside(self._after_block(index))))

    def warm_groups(self):
        """What a forward needs first, in run order: the non-block weights, then every resident block and the
        first ``prefetch`` streamed ones."""
        first_streamed = set(self.plan.streamed[:self.plan.prefetch])
        blocks = self.residency.blocks
        return [self.residency.rest, *(blocks[i] for i in range(len(blocks))
                                       if i not in self._streamed or i in first_streamed)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self in self.pool.members:
            self.pool.members.remove(self)

    def note(self, what: str, name: str) -> None:
        if self.trace is not None:
            self.trace.append((what, name))

    def _prefetch(self, groups) -> None:
        stream = self.residency.stream(self.device)
        for group in groups:
            if group.state == "host":
                self.note("prefetch", group.name)
                group.prefetch(self.device, stream)

    def _before_forward(self, module, args) -> None:
        self.pool.activate(self)
        self._prefetch(self.warm_groups())
        self.note("ready", self.residency.rest.name)
        self.residency.rest.ready(self.device, self.residency.stream(self.device))

    def _before_block(self, index: int):
        group = self.residency.blocks[index]

        def hook(module, args) -> None:
            if group.state != "device":
                self.note("ready", group.name)
                group.ready(self.device, self.residency.stream(self.device))
            self._prefetch(self.residency.blocks[i] for i in self.plan.ahead(index))
        return hook

    def _after_block(self, index: int):
        group = self.residency.blocks[index]

        def hook(module, args, output) -> None:
            self.note("drop", group.name)
            group.offload()
        return hook


def block_bytes(model: torch.nn.Module) -> tuple[list[int], int]:
    """(bytes per block, non-block bytes) of a model's weights."""
    residency = ModelResidency.of(model)
    return [group.nbytes for group in residency.blocks], residency.rest.nbytes


def stream_blocks(model: torch.nn.Module, budget_bytes: int | None, device: torch.device | str,
                  prefetch: int = DEFAULT_PREFETCH, pool: WeightPool | None = None,
                  trace: list | None = None) -> BlockStreamer:
    """Plan and install block streaming for ``model`` under ``budget_bytes`` of weights on ``device`` (None: every
    block resident, still loaded from its pinned copy when the model runs). Models given the same ``pool`` share
    the budget (a Wan2.2 pair). Nothing is copied until `prefetch_weights` or the first forward. A model already
    streaming is re-planned."""
    current = streamer_of(model)
    if current is not None:
        current.remove()
    sizes, rest = block_bytes(model)
    plan = plan_streaming(budget_bytes, sizes, rest, prefetch, what=f"the {getattr(model, 'name', 'model')}")
    streamer = BlockStreamer(model, plan, device, pool if pool is not None else WeightPool(budget_bytes), trace)
    model.__dict__[_STREAMER] = streamer
    return streamer


def streamer_of(model: torch.nn.Module) -> BlockStreamer | None:
    return model.__dict__.get(_STREAMER)


def prefetch_weights(model: torch.nn.Module) -> None:
    """Start loading a streaming model's first tensors ahead of its next forward, as far as its pool's budget
    allows (the expert look-ahead); no-op for a model without streaming."""
    streamer = streamer_of(model)
    if streamer is not None:
        streamer.pool.prefetch(streamer)


def budgeted(models, budget_gb: float, device: torch.device | str, prefetch: int = DEFAULT_PREFETCH) -> None:
    """Run ``models`` (one DiT, or the experts of a pair, which then share the budget) from host copies with at
    most ``budget_gb`` GB of their weights on ``device`` at once: all blocks resident when they fit, else block
    streaming; a pair that does not fit twice drops the idle expert's device copy at the switch."""
    if budget_gb <= 0:
        raise InvalidInputError(f"vram_budget_gb must be positive (got {budget_gb:g}); leave it unset for no limit")
    budget = int(budget_gb * GIB)
    pool = WeightPool(budget)
    for model in models:
        stream_blocks(model, budget, device, prefetch, pool=pool)
