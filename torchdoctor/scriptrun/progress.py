"""Where a script run is (DataLoader pass, applied steps, whether torchdoctor itself is
running a model) and how much detail a record gets there; shared by the recorders."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from torchdoctor.scriptrun.budget import RunBudget

_DETAILED_PER_PASS = 2  # forwards/losses per DataLoader pass summarised with statistics

_F = TypeVar("_F", bound=Callable[..., Any])


def bookkeeping(method: _F) -> _F:
    """Label torchdoctor's own work for torch.profiler (only while one is active), so
    `torchdoctor profile` can leave the doctor's summaries out of the user's top ops."""

    @functools.wraps(method)
    def labelled(*args: Any, **kwargs: Any) -> Any:
        if not torch.autograd.profiler._is_profiler_enabled:
            return method(*args, **kwargs)
        # imported only while a profiler runs: a script run need not load the profiling
        # package (the label's home), a profile has loaded it already
        from torchdoctor.profiling.base import INTERNAL

        with torch.profiler.record_function(INTERNAL):
            return method(*args, **kwargs)

    return labelled  # type: ignore[return-value]


class RunProgress:
    """The position of the run that every record is stamped with."""

    def __init__(self, budget: RunBudget) -> None:
        self.budget = budget
        self.paused = False  # set while torchdoctor itself runs a model (replays)

    @property
    def pass_index(self) -> int:
        """The DataLoader pass running now (the innermost one), -1 outside any."""
        current = self.budget.current_pass
        return -1 if current is None else current.index

    @property
    def applied_steps(self) -> int:
        """Optimizer steps applied so far."""
        return self.budget.applied

    def detailed(self, records: list[Any]) -> bool:
        """Statistics cost kernels: compute them for the first few records of each full
        DataLoader pass only (the later, one-batch passes of a loader repeat what its
        full passes showed), and for everything outside DataLoader passes."""
        current = self.budget.current_pass
        if current is not None and not current.full:
            return False
        in_pass = [r for r in records[-(_DETAILED_PER_PASS + 1):]
                   if getattr(r, "loader_pass", self.pass_index) == self.pass_index]
        return len(in_pass) < _DETAILED_PER_PASS or self.pass_index < 0
