"""The training-step recorder of a script run: ``backward()`` calls, optimizer steps
(applied and skipped by the budget) and ``zero_grad`` calls, with the carried-gradient
detector and the non-finite watch they feed."""

from __future__ import annotations

import math
import time
import weakref
from typing import Any

import torch

from torchdoctor.diagnoses.gradcarry import GradCarryDetector
from torchdoctor.scriptrun.budget import PhaseTimer
from torchdoctor.scriptrun.callsite import user_callsite
from torchdoctor.scriptrun.nonfinite import NonFiniteWatch
from torchdoctor.scriptrun.observations import (
    BackwardRecord,
    OptimizerRecord,
    ScriptRun,
    StepRecord,
)
from torchdoctor.scriptrun.progress import RunProgress, bookkeeping
from torchdoctor.tensors import stored_values


class TrainingRecorder:
    """Records backward passes and optimizer steps into the run."""

    def __init__(self, run: ScriptRun, progress: RunProgress, timer: PhaseTimer,
                 detector: GradCarryDetector, nonfinite: NonFiniteWatch) -> None:
        self.run = run
        self.progress = progress
        self.timer = timer
        self.detector = detector
        self.nonfinite = nonfinite
        self._optimizers: dict[int, int] = {}
        # weakly: the recorder must not keep the user's optimizers alive (and a new
        # optimizer may reuse a freed one's id)
        self._seen: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        # name -> id of parameters with a gradient at a step that no optimizer holds
        self._unoptimized: dict[str, int] = {}
        self._stepped = False
        self._step_started = 0.0

    @bookkeeping
    def after_backward(self, value: float | None) -> None:
        """Record a finished ``backward()`` of a loss worth ``value`` (None: not a scalar)."""
        finite = value is None or math.isfinite(value)
        bad_grads = self.nonfinite.nonfinite(lambda p: p.grad)
        record = BackwardRecord(index=len(self.run.backwards), value=value, finite=finite,
                                step_count=self.progress.applied_steps,
                                location=user_callsite(), nonfinite_grads=bad_grads)
        self.run.backwards.append(record)
        if not self.run.nonfinite and (not finite or bad_grads):
            self.nonfinite.localize("loss" if not finite else "gradient",
                                    bad_grads[0] if bad_grads else "")

    def before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """The global optimizer step pre-hook."""
        self._see(optimizer)
        self._stepped = True
        self.detector.watch(optimizer)
        self.detector.before_step(optimizer)
        self._step_started = time.perf_counter()

    @bookkeeping
    def after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """The global optimizer step post-hook; counts the step against the budget."""
        self.timer.add("step", self._step_started)
        location = user_callsite()
        bad = self.nonfinite.nonfinite_params(optimizer)
        lr = _learning_rate(optimizer)
        self.run.steps.append(StepRecord(
            index=len(self.run.steps), optimizer=self._optimizers[id(optimizer)],
            optimizer_type=type(optimizer).__name__, location=location, lr=lr,
            nonfinite_params=bad))
        self.detector.note_step(optimizer, location)
        self._note_unoptimized()
        if bad and not any(r.kind == "parameter" for r in self.run.nonfinite):
            self.nonfinite.localize("parameter", bad[0], lr)
        self.progress.budget.after_step(optimizer)

    def skipped_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Record a step the budget skipped."""
        self._see(optimizer)
        self.run.steps.append(StepRecord(
            index=len(self.run.steps), optimizer=self._optimizers[id(optimizer)],
            optimizer_type=type(optimizer).__name__, location=user_callsite(), skipped=True))

    def index_of(self, optimizer: torch.optim.Optimizer) -> int:
        """The number of an optimizer seen at a ``zero_grad()`` or ``step()``."""
        return self._optimizers[id(optimizer)]

    @property
    def has_optimizers(self) -> bool:
        """Whether any optimizer has stepped yet (one only cleared does not count)."""
        return self._stepped

    def zero_grad(self, owner: Any) -> None:
        """Note a ``zero_grad`` call of ``owner`` (an optimizer or a module) for the
        detector."""
        if isinstance(owner, torch.optim.Optimizer):
            self._see(owner)
        self.detector.note_zero_grad(user_callsite(), _params_of(owner))

    def _see(self, optimizer: torch.optim.Optimizer) -> None:
        """Number an optimizer at its first ``zero_grad()``/``step()`` and record it."""
        if optimizer in self._seen:
            return
        self._optimizers[id(optimizer)] = len(self.run.optimizers)
        self._seen.add(optimizer)
        self.run.optimizers.append(OptimizerRecord(
            index=len(self.run.optimizers), optimizer_type=type(optimizer).__name__,
            location=user_callsite()))
        self._publish_unoptimized()

    def _held(self) -> set[int]:
        """Ids of the parameters any optimizer seen so far holds (now: param groups grow)."""
        return {id(p) for optimizer in list(self._seen) for p in _params_of(optimizer)}

    def _note_unoptimized(self) -> None:
        """After a step: parameters of the observed models that carry a non-zero gradient
        but that no optimizer holds (an optimizer seen later can still claim them)."""
        held = self._held()
        forwards = self.nonfinite.forwards
        for model in forwards.models:
            for param in model.parameters():
                grad = param.grad
                if id(param) not in held and param.requires_grad and grad is not None \
                        and bool(stored_values(grad).ne(0).any()):
                    self._unoptimized.setdefault(forwards.param_name(param), id(param))
        self._publish_unoptimized(held)

    def _publish_unoptimized(self, held: set[int] | None = None) -> None:
        held = self._held() if held is None else held
        self._unoptimized = {n: i for n, i in self._unoptimized.items() if i not in held}
        self.run.unoptimized_grads = list(self._unoptimized)


def _params_of(owner: Any) -> list[torch.Tensor]:
    """The parameters a ``zero_grad`` of ``owner`` (optimizer or module) clears."""
    if isinstance(owner, torch.optim.Optimizer):
        return [p for group in owner.param_groups for p in group["params"]]
    return list(owner.parameters()) if isinstance(owner, torch.nn.Module) else []


def _learning_rate(optimizer: torch.optim.Optimizer) -> float | None:
    lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
    if isinstance(lr, torch.Tensor):
        return float(lr)
    return float(lr) if isinstance(lr, (int, float)) else None
