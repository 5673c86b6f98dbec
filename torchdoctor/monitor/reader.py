"""From one read window to findings and history: the host side of every read."""

from __future__ import annotations

import math
from collections.abc import Callable

from torchdoctor.findings import Finding
from torchdoctor.monitor.analysis import (
    GradientNorms,
    LossTrend,
    NonFiniteEvent,
    Thresholds,
    first_nonfinite,
    no_gradient_finding,
    ratio_findings,
)
from torchdoctor.monitor.report import History
from torchdoctor.monitor.stats import ParamLayout, Window

#: called with the first NaN/inf of the watch; returns its findings (localised)
OnNonFinite = Callable[[NonFiniteEvent, Window], list[Finding]]


class WindowReader:
    """Runs the monitors over each window and keeps what outlives it: the history, the
    loss trend, the runs of small gradients, the per-parameter gradient peaks."""

    def __init__(self, layout: ParamLayout, thresholds: Thresholds, history: int) -> None:
        self.layout = layout
        self.thresholds = thresholds
        self.norms = GradientNorms(layout, thresholds)
        self.trend = LossTrend(thresholds)
        self.history = History(layout.labels, history)
        self.peak: list[float] | None = None
        self.nan_seen = False

    def read(self, window: Window, lrs: list[float | None],
             on_nonfinite: OnNonFinite) -> list[Finding]:
        """The findings of ``window`` (the first NaN/inf goes to ``on_nonfinite``)."""
        found = []
        event = None if self.nan_seen else first_nonfinite(window, self.layout)
        if event is not None:
            self.nan_seen = True
            found += on_nonfinite(event, window)
        found += self.norms.check(window)
        found += ratio_findings(window, self.layout, lrs, self.thresholds)
        found += self._record(window)
        if window.peak is not None:
            self.peak = window.peak
        return found

    @property
    def all_had_gradients(self) -> bool:
        """Every parameter had a non-zero (or NaN) gradient at some step."""
        return self.peak is not None and all(value != 0 for value in self.peak)

    def no_gradient(self, steps: int) -> Finding | None:
        """The parameters that never got a gradient so far, as a finding."""
        return no_gradient_finding(self.layout, self.peak, steps)

    def _record(self, window: Window) -> list[Finding]:
        found = []
        for i, norms in enumerate(window.grad_norms):
            step = window.first_step + i
            self.history.grad_norms.append((step, norms))
            loss = window.losses[i]
            if loss is not None and math.isfinite(loss):
                self.history.losses.append((step, loss))
                found += self.trend.add(step, loss)
        self.history.update_ratios.extend(window.ratios)
        return found
