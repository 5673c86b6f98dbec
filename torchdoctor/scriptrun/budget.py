"""The fast-dev-run budget of a script-mode run: caps *per phase*, so the program runs to
its end (every epoch, then validation, test, predict, checkpoints) at a small cost.

* **Batches per DataLoader pass**: the first :data:`FULL_PASSES` passes of each loader
  (counted apart with gradients on and off, so a loader that both trains and
  evaluates gets full passes for each) yield at most ``--limit-batches`` batches; its
  later passes yield
  :data:`LATER_PASS_BATCHES`, so a 10- or 100-epoch loop runs through cheaply and a
  loop that averages over its batches never divides by zero.
* **Gradient accumulation**: a full pass in which backward passes ran but fewer than
  :data:`STEPS_PER_PASS` optimizer steps were taken yields more batches (up to
  :data:`PASS_CEILING`), so a loop that steps every 8 or 16 micro-batches reaches its
  second step in the pass (a missing ``zero_grad`` shows only there).
* **Optimizer steps**: ``--max-steps`` steps are applied in the whole run; later steps are
  skipped (the loop still runs through, the step's cost is saved), except the first
  :data:`STEPS_PER_PASS` steps of each full pass, which are applied: the checks judge
  each training loop from applied steps.
* **Safety caps** for loops no DataLoader pass bounds (``while True`` over ``get_batch``,
  ``for i in range(10000)`` over tensors): more than :data:`LOOP_CAP_FACTOR` x
  ``--max-steps`` backward passes with no DataLoader batch between them, more than
  :data:`MAX_PASSES` DataLoader passes or :data:`MAX_BACKWARDS` backward passes in all
  cut the run with a reason (:class:`StopRun`). ``--timeout`` bounds everything.

``profile --steps N`` (``skipped_steps=0``) stops right after N applied steps and gives
every pass the full ``--limit-batches``: it measures representative steps, not phases.

Kept apart from the observation hooks in :mod:`torchdoctor.scriptrun.instrument`: this
module *changes* how the user's loop runs (within the limits above), the others watch it.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch

FULL_PASSES = 2  #: passes of one DataLoader that get the full --limit-batches
LATER_PASS_BATCHES = 1  #: batches of each later pass of the same DataLoader
STEPS_PER_PASS = 2  #: optimizer steps a full training pass is extended to reach
PASS_CEILING = 64  #: batches of one pass at most, however many micro-batches it accumulates
#: batches of one pass at most while no step came yet (a loop with no optimizer at all
#: pays this once: then passes with backward passes and no step are not extended again)
FIRST_STEP_CEILING = 32
LOOP_CAP_FACTOR = 2  #: backward passes with no DataLoader batch between them, x --max-steps
MAX_PASSES = 1000  #: DataLoader passes of the whole program
MAX_BACKWARDS = 2000  #: backward passes of the whole program

STEP_BUDGET_NOTE = "stopped after the step budget"  #: profile --steps says it its own way


class StopRun(BaseException):
    """Raised inside the user's script to cut it at a cap (``reason`` says which). A
    BaseException so that the user's ``except Exception`` does not swallow it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PhaseTimer:
    """Accumulates wall seconds per phase (data, forward, backward, step)."""

    def __init__(self, phases: dict[str, float]) -> None:
        self.phases = phases

    def add(self, phase: str, since: float) -> None:
        """Add the seconds elapsed since ``since`` (a perf_counter value) to ``phase``."""
        self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - since


class PassBudget:
    """What one DataLoader pass may yield, and what happened in it."""

    def __init__(self, budget: RunBudget, index: int, loader: int, number: int, limit: int,
                 full: bool) -> None:
        self.index = index  #: which pass of the run (0-based)
        self.loader = loader  #: which DataLoader (numbered by first pass)
        self.number = number  #: which pass of that loader (0-based)
        self.limit = limit
        self.full = full
        self.batches = 0
        self.extended = False
        self._budget = budget
        self._backwards_at_start = budget.backwards
        self._steps_at_start = budget.steps

    @property
    def backwards(self) -> int:
        """Backward passes since this pass started."""
        return self._budget.backwards - self._backwards_at_start

    @property
    def steps(self) -> int:
        """Optimizer steps (applied or skipped) since this pass started."""
        return self._budget.steps - self._steps_at_start

    def may_fetch(self) -> bool:
        """Whether one more batch may be fetched."""
        if self.batches < self.limit:
            return True
        if not (self.full and self.backwards > 0 and self.steps < STEPS_PER_PASS):
            return False
        ceiling = PASS_CEILING if self.steps else FIRST_STEP_CEILING
        if self._budget.stepless_loop or self.batches >= ceiling:
            return False
        self.extended = True
        return True


class LimitedIterator:
    """A DataLoader iterator that yields what its :class:`PassBudget` allows and times
    each fetch. ``on_end(capped)`` is called once when it stops (capped: the loader had
    more batches than it gave)."""

    def __init__(self, inner: Iterator[Any], allowance: PassBudget,
                 on_fetch: Callable[[float], None], on_end: Callable[[bool], None]) -> None:
        self._ended = False  # set first: __del__ reads it even if __init__ did not finish
        self._inner = inner
        self.allowance = allowance
        self._on_fetch = on_fetch
        self._on_end = on_end

    def __iter__(self) -> LimitedIterator:
        return self

    def __len__(self) -> int:
        return min(len(self._inner), self.allowance.limit)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        if not self.allowance.may_fetch():
            self._end(capped=self._has_more())
            raise StopIteration
        started = time.perf_counter()
        try:
            batch = next(self._inner)
        except StopIteration:
            self._end(capped=False)
            raise
        self.allowance.batches += 1
        self._on_fetch(started)
        return batch

    def __del__(self) -> None:
        # the user's loop broke out of the pass (its iterator was dropped): the pass is
        # over, by the user's choice, not capped
        if not self._ended:
            self._end(capped=False)

    def _has_more(self) -> bool:
        """Whether the loader had batches left (unknown length: assume so)."""
        try:
            return len(self._inner) > self.allowance.batches  # type: ignore[arg-type]
        except TypeError:  # an iterable dataset without __len__
            return True

    def _end(self, capped: bool) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(capped)


class RunBudget:
    """The caps of one run (see the module docstring). Optimizer steps go through
    :meth:`_dispatch_step` once an optimizer has stepped: it applies or skips each call."""

    def __init__(self, limit_batches: int, max_steps: int,
                 on_skip: Callable[[torch.optim.Optimizer], None],
                 skipped_steps: int | None = None) -> None:
        self.limit_batches = limit_batches
        self.max_steps = max_steps
        #: None: run to the end; N: cut after N skipped steps (0: at the last applied one)
        self.skip_limit = skipped_steps
        self.applied = 0
        self.skipped = 0
        self.backwards = 0
        self.passes = 0
        self._since_fetch = 0  # backward passes since the last DataLoader batch
        self._on_skip = on_skip
        # loader -> (its number, passes so far with grad enabled/disabled)
        self._loaders: weakref.WeakKeyDictionary[Any, tuple[int, dict[bool, int]]] = \
            weakref.WeakKeyDictionary()
        self._live: list[PassBudget] = []  # passes started and not finished, innermost last
        self._stepless = False  # an extended pass ran backward passes and no step at all
        self._replaced: list[tuple[torch.optim.Optimizer, bool, Any]] = []

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far, applied or skipped."""
        return self.applied + self.skipped

    @property
    def stepless_loop(self) -> bool:
        """Whether the loop trains with no optimizer step (hand-written updates): its
        passes are not extended for accumulation again."""
        return self._stepless and self.steps == 0

    @property
    def current_pass(self) -> PassBudget | None:
        """The innermost DataLoader pass still running, if any."""
        return self._live[-1] if self._live else None

    # -- DataLoader passes -----------------------------------------------------------
    def start_pass(self, loader: Any) -> PassBudget:
        """A new pass over ``loader``: its allowance (the safety cap may end the run)."""
        self.passes += 1
        if self.passes > MAX_PASSES:
            raise StopRun(f"safety cap: more than {MAX_PASSES} DataLoader passes")
        # a loader used both to train and to evaluate (under no_grad) gets its full
        # passes for each
        number_of_loader, counts = self._loaders.get(loader, (len(self._loaders), {}))
        self._loaders[loader] = (number_of_loader, counts)
        grad = torch.is_grad_enabled()
        passes_before = counts.get(grad, 0)
        counts[grad] = passes_before + 1
        full = passes_before < FULL_PASSES or self.skip_limit is not None
        allowance = PassBudget(self, self.passes - 1, number_of_loader, passes_before,
                               self.limit_batches if full else LATER_PASS_BATCHES, full)
        self._live.append(allowance)
        return allowance

    def end_pass(self, allowance: PassBudget) -> None:
        """A pass stopped (exhausted or capped)."""
        if allowance.extended and allowance.backwards > 0 and allowance.steps == 0:
            self._stepless = True
        if allowance in self._live:
            self._live.remove(allowance)

    def fetched(self) -> None:
        """A batch was fetched: the loop is driven by a DataLoader."""
        self._since_fetch = 0

    # -- backward passes and steps ---------------------------------------------------
    def after_backward(self) -> None:
        """Count a backward pass; a loop no DataLoader bounds is cut at the safety cap."""
        self.backwards += 1
        self._since_fetch += 1
        loop_cap = LOOP_CAP_FACTOR * self.max_steps
        if self._since_fetch > loop_cap:
            raise StopRun(f"safety cap: {loop_cap} backward passes with no DataLoader batch "
                          f"between them ({LOOP_CAP_FACTOR} x --max-steps; a loop no "
                          "DataLoader pass bounds)")
        if self.backwards > MAX_BACKWARDS:
            raise StopRun(f"safety cap: more than {MAX_BACKWARDS} backward passes")

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Count an applied step (from the global post-hook) and route this optimizer's
        later steps through the budget."""
        self.applied += 1
        if self.skip_limit == 0 and self.applied >= self.max_steps:
            raise StopRun(f"{STEP_BUDGET_NOTE} ({self.max_steps} optimizer steps applied)")
        self._route_steps_of(optimizer)

    def should_apply(self) -> bool:
        """Whether the next step is applied: within --max-steps, or one of the first
        steps of a full pass (the checks judge each training loop from applied steps)."""
        if self.applied < self.max_steps:
            return True
        current = self.current_pass
        return current is not None and current.full and current.steps < STEPS_PER_PASS

    def restore(self) -> None:
        """Give every optimizer its own ``step`` back."""
        for optimizer, had_attr, previous in self._replaced:
            if had_attr:  # e.g. an LR scheduler's wrapper, set on the instance
                optimizer.step = previous  # type: ignore[method-assign]
            else:
                vars(optimizer).pop("step", None)
        self._replaced.clear()

    def _route_steps_of(self, optimizer: torch.optim.Optimizer) -> None:
        if any(o is optimizer for o, _, _ in self._replaced):
            return
        had_attr = "step" in vars(optimizer)
        previous = vars(optimizer).get("step")
        self._replaced.append((optimizer, had_attr, previous))
        apply: Callable[..., Any] = previous if previous is not None else \
            type(optimizer).step.__get__(optimizer)
        budget = weakref.ref(self)

        def budgeted_step(*args: Any, **kwargs: Any) -> Any:
            live = budget()
            if live is None or live.should_apply():
                return apply(*args, **kwargs)
            live.skipped += 1
            live._on_skip(optimizer)
            if live.skip_limit is not None and live.skipped >= live.skip_limit:
                raise StopRun(f"{STEP_BUDGET_NOTE} ({live.max_steps} applied, "
                              f"{live.skipped} skipped)")
            return None

        optimizer.step = budgeted_step  # type: ignore[method-assign]
