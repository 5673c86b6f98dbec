"""The fast-dev-run budget of a script-mode run: few batches per DataLoader pass, a
capped number of optimizer steps, then a stop.

Kept apart from the observation hooks in :mod:`torchdoctor.scriptrun.instrument`: this module
*changes* how the user's loop runs (within the limits the CLI options set), the other
only watches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


class StopRun(BaseException):
    """Raised inside the user's script to end it at the step budget. A BaseException so
    that the user's ``except Exception`` does not swallow it."""


class PhaseTimer:
    """Accumulates wall seconds per phase (data, forward, backward, step)."""

    def __init__(self, phases: dict[str, float]) -> None:
        self.phases = phases

    def add(self, phase: str, since: float) -> None:
        """Add the seconds elapsed since ``since`` (a perf_counter value) to ``phase``."""
        self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - since


class LimitedIterator:
    """A DataLoader iterator that stops after ``limit`` batches and times each fetch."""

    def __init__(self, inner: Iterator[Any], limit: int,
                 on_fetch: Callable[[float], None]) -> None:
        self._inner = inner
        self._left = limit
        self._on_fetch = on_fetch

    def __iter__(self) -> LimitedIterator:
        return self

    def __len__(self) -> int:
        return min(len(self._inner), self._left)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        if self._left <= 0:
            raise StopIteration
        started = time.perf_counter()
        batch = next(self._inner)
        self._left -= 1
        self._on_fetch(started)
        return batch


class StepBudget:
    """After ``max_steps`` applied optimizer steps, each optimizer's ``step`` is replaced
    by ``on_skip`` (an instance attribute, restored by :meth:`restore`); once as many
    steps were skipped, :class:`StopRun` ends the run. Skipping rather than stopping at
    once lets a script that trains first and evaluates afterwards reach its evaluation.
    """

    def __init__(self, max_steps: int, on_skip: Callable[[torch.optim.Optimizer], None],
                 skipped_steps: int | None = None) -> None:
        self.max_steps = max_steps
        #: skipped steps before StopRun; 0 stops right after the last applied step
        self.skip_limit = max_steps if skipped_steps is None else skipped_steps
        self.applied = 0
        self.skipped = 0
        self._on_skip = on_skip
        self._replaced: list[tuple[torch.optim.Optimizer, bool, Any]] = []

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Count an applied step; past the budget, make this optimizer skip."""
        self.applied += 1
        if self.applied >= self.max_steps:
            if self.skip_limit <= 0:
                raise StopRun
            self._skip_steps_of(optimizer)

    def after_backward(self, backwards: int) -> None:
        """A loop with no optimizer (hand-written updates) has no step to skip: end it
        after ``2 * max_steps`` backward passes, as many as a stepped run would see."""
        if self.applied == 0 and backwards >= 2 * self.max_steps:
            raise StopRun

    def restore(self) -> None:
        """Give every optimizer its own ``step`` back."""
        for optimizer, had_attr, previous in self._replaced:
            if had_attr:  # e.g. an LR scheduler's wrapper, set on the instance
                optimizer.step = previous  # type: ignore[method-assign]
            else:
                del optimizer.step
        self._replaced.clear()

    def _skip_steps_of(self, optimizer: torch.optim.Optimizer) -> None:
        if any(o is optimizer for o, _, _ in self._replaced):
            return
        self._replaced.append((optimizer, "step" in vars(optimizer),
                               vars(optimizer).get("step")))

        def skipped_step(*args: Any, **kwargs: Any) -> None:
            self.skipped += 1
            self._on_skip(optimizer)
            if self.skipped >= self.skip_limit:
                raise StopRun
            return None

        optimizer.step = skipped_step  # type: ignore[method-assign,assignment]
