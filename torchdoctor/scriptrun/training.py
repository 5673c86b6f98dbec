"""The training-step recorder of a script run: ``backward()`` calls, optimizer steps
(applied and skipped by the budget) and ``zero_grad`` calls, with the carried-gradient
detector and the non-finite watch they feed."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from torchdoctor.diagnoses.gradcarry import GradCarryDetector
from torchdoctor.scriptrun.budget import PhaseTimer
from torchdoctor.scriptrun.callsite import user_callsite
from torchdoctor.scriptrun.nonfinite import NonFiniteWatch
from torchdoctor.scriptrun.observations import BackwardRecord, ScriptRun, StepRecord
from torchdoctor.scriptrun.progress import RunProgress, bookkeeping


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
        self._optimizers.setdefault(id(optimizer), len(self._optimizers))
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
        if bad and not any(r.kind == "parameter" for r in self.run.nonfinite):
            self.nonfinite.localize("parameter", bad[0], lr)
        self.progress.budget.after_step(optimizer)

    def skipped_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Record a step the budget skipped."""
        self.run.steps.append(StepRecord(
            index=len(self.run.steps), optimizer=self._optimizers[id(optimizer)],
            optimizer_type=type(optimizer).__name__, location=user_callsite(), skipped=True))

    @property
    def has_optimizers(self) -> bool:
        """Whether any optimizer has stepped yet."""
        return bool(self._optimizers)

    def zero_grad(self, owner: Any) -> None:
        """Note a ``zero_grad`` call of ``owner`` (an optimizer or a module) for the
        detector."""
        self.detector.note_zero_grad(user_callsite(), _params_of(owner))


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
