"""One DiT or a Wan2.2 A14B expert pair (high-noise, low-noise) for a sampler run.

Entry point: `Experts(models, hook)`; `plan(schedule, boundary)` lists the expert of every step and
`activate(i, step)` returns that expert, calling `hook(active, idle)` whenever the expert in use changes (and before
the first step), so a caller can move the idle expert off the GPU (spec sampling.md §3). Look-ahead: when ``step``
is the last one before a switch, the next expert's weights start loading before this step's model call, so the copy
overlaps it: through ``hook.prefetch(upcoming)`` when the hook has one, else `models.streaming.prefetch_weights`
(models loaded with a VRAM budget; a no-op for others).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from torch import nn

from ..errors import InvalidInputError
from ..expert_names import EXPERTS, HIGH, LOW
from ..models.streaming import prefetch_weights

log = logging.getLogger(__name__)

ExpertHook = Callable[[nn.Module, nn.Module], None]
"""Called as ``hook(active, idle)`` before the first model call of each expert segment of a two-expert run. A hook
may also have ``prefetch(upcoming)``, called before the last model call ahead of a switch."""

# Index of each expert in a pair: its place in the run order.
HIGH_NOISE, LOW_NOISE = EXPERTS.index(HIGH), EXPERTS.index(LOW)


class Experts:
    """The models of one run: a single DiT, or (high-noise expert, low-noise expert)."""

    def __init__(self, models: nn.Module | Sequence[nn.Module], hook: ExpertHook | None = None):
        if isinstance(models, nn.Module):
            models = (models,)
        models = tuple(models)
        if len(models) not in (1, 2) or not all(isinstance(m, nn.Module) for m in models):
            raise InvalidInputError("models must be one DiT or a (high-noise, low-noise) pair of DiTs")
        self.models = models
        self.hook = hook
        self.active: int | None = None
        self.steps: list[int] = []

    @property
    def pair(self) -> bool:
        return len(self.models) == 2

    def plan(self, schedule, boundary: float) -> list[int]:
        """Expert index per step: all 0 for one model, else the schedule's switching rule."""
        if not self.pair:
            self.steps = [HIGH_NOISE] * schedule.num_steps
        else:
            self.steps = list(schedule.expert_steps(boundary))
        return list(self.steps)

    def activate(self, index: int, step: int | None = None) -> nn.Module:
        """The model for a step of expert `index`; runs the hook when the pair switches. With ``step`` (its place
        in the `plan`), the next expert is prefetched when the step after this one switches."""
        if self.pair and index != self.active:
            log.debug("switching to the %s-noise expert", EXPERTS[index])
            if self.hook is not None:
                self.hook(self.models[index], self.models[1 - index])
        self.active = index
        if self.pair and step is not None and step + 1 < len(self.steps) and self.steps[step + 1] != index:
            self.prefetch(self.models[self.steps[step + 1]])
        return self.models[index]

    def prefetch(self, upcoming: nn.Module) -> None:
        """Start loading ``upcoming`` ahead of its first step (the hook's ``prefetch``, else the model's own)."""
        prefetch = getattr(self.hook, "prefetch", None)
        if prefetch is not None:
            prefetch(upcoming)
        else:
            prefetch_weights(upcoming)
