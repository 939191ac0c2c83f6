"""One DiT or a Wan2.2 A14B expert pair (high-noise, low-noise) for a sampler run.

Entry point: `Experts(models, hook)`; `plan(schedule, boundary)` lists the expert of every step and `activate(i)`
returns that expert, calling `hook(active, idle)` whenever the expert in use changes (and before the first step),
so a caller can move the idle expert off the GPU (spec sampling.md §3).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from torch import nn

from ..errors import InvalidInputError
from ..expert_names import EXPERTS, HIGH, LOW

log = logging.getLogger(__name__)

ExpertHook = Callable[[nn.Module, nn.Module], None]
"""Called as ``hook(active, idle)`` before the first model call of each expert segment of a two-expert run."""

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

    @property
    def pair(self) -> bool:
        return len(self.models) == 2

    def plan(self, schedule, boundary: float) -> list[int]:
        """Expert index per step: all 0 for one model, else the schedule's switching rule."""
        if not self.pair:
            return [HIGH_NOISE] * schedule.num_steps
        return schedule.expert_steps(boundary)

    def activate(self, index: int) -> nn.Module:
        """The model for a step of expert `index`; runs the hook when the pair switches."""
        if self.pair and index != self.active:
            log.debug("switching to the %s-noise expert", EXPERTS[index])
            if self.hook is not None:
                self.hook(self.models[index], self.models[1 - index])
        self.active = index
        return self.models[index]
