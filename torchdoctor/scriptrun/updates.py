"""The update-size recorder of a script run: how far the script's own optimizer moves
each param group at its first few steps, as ``||Δw|| / ||w||``.

Fed by the global optimizer step hooks (before and after each applied ``step()``). To
keep the cost small it measures only the first :data:`MEASURED_STEPS` steps of each
optimizer, and of each parameter only its first :data:`SAMPLED_VALUES` values (a fixed
slice: the ratio of a slice estimates the tensor's). The judgement is
:mod:`torchdoctor.diagnoses.learning_rate`'s.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch

from torchdoctor.scriptrun.callsite import user_callsite
from torchdoctor.scriptrun.observations import ScriptRun, UpdateRecord
from torchdoctor.scriptrun.progress import bookkeeping

#: steps measured per optimizer: enough to see a warmup or a settling first step
MEASURED_STEPS = 5
#: values of each parameter compared before and after a step (bounds memory and time)
SAMPLED_VALUES = 65536

#: per param group: (the sampled values before the step, of each parameter with a grad)
_Before = list[list[tuple[torch.Tensor, torch.Tensor]]]


class UpdateRecorder:
    """Measures the relative update of each param group at an optimizer's first steps."""

    def __init__(self, run: ScriptRun, index_of: Callable[[torch.optim.Optimizer], int],
                 name_of: Callable[[torch.Tensor], str]) -> None:
        self.run = run
        self._index_of = index_of
        self._name_of = name_of
        # weakly: the recorder must not keep the user's optimizers alive
        self._records: weakref.WeakKeyDictionary[torch.optim.Optimizer, list[UpdateRecord]] \
            = weakref.WeakKeyDictionary()
        self._before: _Before | None = None

    @bookkeeping
    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Copy a slice of each parameter that has a gradient (the step may move it)."""
        self._before = None
        records = self._records.get(optimizer)
        if records is not None and len(records[0].ratios) >= MEASURED_STEPS:
            return
        with torch.no_grad():
            self._before = [[(p, _sample(p).clone()) for p in group["params"]
                             if p.grad is not None] for group in optimizer.param_groups]

    @bookkeeping
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Record ``||Δw|| / ||w||`` of each param group for the step that just ran."""
        before, self._before = self._before, None
        if before is None or len(before) != len(optimizer.param_groups):
            return  # not measured, or groups added by the step itself
        records = self._records.get(optimizer) or self._start(optimizer)
        if len(records) != len(before):
            return  # add_param_group since the first measured step: the rest is measured
        with torch.no_grad():
            for record, group, sampled in zip(records, optimizer.param_groups, before):
                ratio = _ratio(sampled)
                if ratio is not None:
                    record.ratios.append(ratio)
                    record.lrs.append(_float(group.get("lr")))
                    record.values = max(record.values, sum(old.numel() for _, old in sampled))

    def _start(self, optimizer: torch.optim.Optimizer) -> list[UpdateRecord]:
        """The records of an optimizer's groups, at its first measured step."""
        location = user_callsite()
        records = [UpdateRecord(
            optimizer=self._index_of(optimizer), optimizer_type=type(optimizer).__name__,
            group=i, first_param=self._name_of(group["params"][0]) if group["params"] else "",
            location=location, initial_lr=_float_or_none(group.get("initial_lr")))
            for i, group in enumerate(optimizer.param_groups)]
        self._records[optimizer] = records
        self.run.update_sizes.extend(records)
        return records


def _sample(param: torch.Tensor) -> torch.Tensor:
    """The first :data:`SAMPLED_VALUES` values of ``param``, flattened."""
    return param.detach().reshape(-1)[:SAMPLED_VALUES]


def _ratio(sampled: list[tuple[torch.Tensor, torch.Tensor]]) -> float | None:
    """``||after - before|| / ||before||`` over all of a group's sampled values (None
    when no parameter of the group had a gradient or the weights are not finite, NaN
    when they were all zero)."""
    if not sampled:
        return None
    moved = torch.stack([torch.linalg.vector_norm((_sample(p) - old).double())
                         for p, old in sampled])
    size = torch.stack([torch.linalg.vector_norm(old.double()) for _, old in sampled])
    moved_norm, size_norm = float(moved.norm()), float(size.norm())
    if not math.isfinite(moved_norm) or not math.isfinite(size_norm):
        return None  # non-finite weights: the nan-loss check's
    if size_norm == 0.0:
        return math.nan
    return moved_norm / size_norm


def _float_or_none(value: object) -> float | None:
    """A learning rate as a float (it may be a tensor), None when missing."""
    if isinstance(value, torch.Tensor):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def _float(value: object) -> float:
    """A learning rate as a float; NaN when the group has none."""
    lr = _float_or_none(value)
    return math.nan if lr is None else lr
