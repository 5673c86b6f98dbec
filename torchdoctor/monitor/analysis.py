"""Turning the figures of a window into findings: non-finite values, exploding and
vanishing gradients, update-to-weight ratios, loss trend, parameters without gradient.

Pure host-side Python over the lists :class:`~torchdoctor.monitor_stats.Window` holds;
no torch here. The thresholds are documented in docs/watch.md.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import fmean

from torchdoctor.diagnoses import parameters
from torchdoctor.findings import Finding, Severity
from torchdoctor.monitor.stats import ParamLayout, Window


@dataclass(frozen=True)
class Thresholds:
    """When a figure becomes a finding (see docs/watch.md for the reasoning)."""

    #: a group's gradient norm above this is "exploding"
    grad_norm_max: float = 1e3
    #: a group's gradient norm below this (but not 0) for ``vanishing_steps`` steps
    grad_norm_min: float = 1e-7
    vanishing_steps: int = 10
    #: ||delta w|| / ||w|| per step above this: the learning rate is too high
    update_ratio_max: float = 0.1
    #: ... below this (with lr > 0): the weights barely move
    update_ratio_min: float = 1e-7
    #: steps averaged into one loss value for the trend
    loss_window: int = 20
    #: a window mean this many times the best one (and above the first): diverging
    diverge_factor: float = 10.0
    #: the loss did not decrease over this many steps (second half vs first half): flat
    flat_steps: int = 100
    #: relative decrease below which the loss counts as flat
    flat_tolerance: float = 0.01

    def __post_init__(self) -> None:
        for name in ("vanishing_steps", "loss_window", "flat_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"Thresholds.{name} must be >= 1")


def _finding(check: str, severity: Severity, message: str, location: str,
             hint: str) -> Finding:
    return Finding(check, severity, message, location, hint)


@dataclass(frozen=True)
class NonFiniteEvent:
    """The first NaN/inf in a window: at which step, in the loss or the gradients,
    and which parameters' gradients were non-finite at the latest step."""

    step: int
    kind: str  #: "loss" or "gradient"
    latest: bool  #: the event is at the latest step seen (its inputs may still be held)
    params: list[str]


def first_nonfinite(window: Window, layout: ParamLayout) -> NonFiniteEvent | None:
    """The earliest step of ``window`` with a non-finite loss or gradient norm."""
    last = len(window.losses) - 1
    for i, loss in enumerate(window.losses):
        norms = window.grad_norms[i] if i < len(window.grad_norms) else []
        kind = "loss" if loss is not None and not math.isfinite(loss) else \
            "gradient" if not all(map(math.isfinite, norms)) else ""
        if kind:
            bad = [name for name, n in zip(layout.names, window.param_norms)
                   if not math.isfinite(n)] if i >= len(window.grad_norms) - 1 else []
            return NonFiniteEvent(window.first_step + i, kind, i == last, bad)
    return None


def nonfinite_finding(event: NonFiniteEvent, world: int) -> Finding:
    """The finding for a first NaN/inf (before localisation)."""
    from torchdoctor.diagnoses.nonfinite import NONFINITE_CHECK_ID, UNKNOWN, WHAT
    from torchdoctor.diagnoses.wording import name_list

    ranks = f" (on at least one of {world} ranks)" if world > 1 else ""
    message = f"{WHAT[event.kind]} at step {event.step}{ranks}"
    if event.params:
        message += f"; non-finite gradients in {name_list(event.params, 4)}"
    # not localised or classified yet: the fix for every cause
    return _finding(NONFINITE_CHECK_ID, Severity.ERROR, message, f"step {event.step}",
                    UNKNOWN.hint)


class GradientNorms:
    """Exploding (one step above the maximum) and vanishing (``vanishing_steps`` steps
    in a row below the minimum) gradients, per parameter group."""

    def __init__(self, layout: ParamLayout, thresholds: Thresholds) -> None:
        self.labels = layout.labels
        self.t = thresholds
        self._low_run = [0] * len(layout.labels)

    def check(self, window: Window) -> list[Finding]:
        """Findings for the steps of ``window`` (non-finite norms are left to nan-loss)."""
        found = []
        for i, norms in enumerate(window.grad_norms):
            step = window.first_step + i
            for group, norm in enumerate(norms):
                found.extend(self._check_one(group, norm, step))
        return found

    def _check_one(self, group: int, norm: float, step: int) -> list[Finding]:
        label = self.labels[group]
        if not math.isfinite(norm):
            return []
        if norm > self.t.grad_norm_max:
            return [_finding(
                "gradient-norm", Severity.WARNING,
                f"the gradient norm of {label} reached {norm:.3g} at step {step} (above "
                f"{self.t.grad_norm_max:g}): exploding gradients", label,
                "clip gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)), "
                "lower the learning rate, check initialisation and normalisation")]
        self._low_run[group] = self._low_run[group] + 1 if 0 < norm < self.t.grad_norm_min \
            else 0
        if self._low_run[group] >= self.t.vanishing_steps:
            return [_finding(
                "gradient-norm", Severity.WARNING,
                f"the gradient norm of {label} stayed below {self.t.grad_norm_min:g} for "
                f"{self._low_run[group]} steps (last {norm:.3g} at step {step}): vanishing "
                "gradients", label,
                "look for saturated sigmoid/tanh or dead ReLUs, check initialisation, add "
                "normalisation or residual connections")]
        return []


def ratio_findings(window: Window, layout: ParamLayout, lrs: list[float | None],
                   t: Thresholds) -> list[Finding]:
    """Update-to-weight ratios outside [update_ratio_min, update_ratio_max]."""
    found = []
    for step, ratios in window.ratios:
        for label, ratio, lr in zip(layout.labels, ratios, lrs):
            if math.isfinite(ratio) and lr != 0:
                found.extend(_ratio_finding(label, ratio, lr, step, t))
    return found


def _ratio_finding(label: str, ratio: float, lr: float | None, step: int,
                   t: Thresholds) -> list[Finding]:
    rate = f"lr {lr:g}" if lr is not None else "lr ?"
    if ratio > t.update_ratio_max:
        return [_finding(
            "update-ratio", Severity.WARNING,
            f"one optimizer step changed the weights of {label} by {ratio:.3g} of their "
            f"norm at step {step} (above {t.update_ratio_max:g}; {rate})", label,
            "the learning rate is probably too high: lower it; a healthy update/weight "
            "ratio is around 1e-3")]
    if ratio < t.update_ratio_min:
        return [_finding(
            "update-ratio", Severity.WARNING,
            f"one optimizer step changed the weights of {label} by only {ratio:.3g} of "
            f"their norm at step {step} (below {t.update_ratio_min:g}; {rate}): they barely "
            "move", label, "the learning rate may be too low, or the gradients vanish")]
    return []


class LossTrend:
    """Diverging (a window mean ``diverge_factor`` times the best one, and above the
    first) and flat (no decrease over ``flat_steps`` steps) losses."""

    def __init__(self, t: Thresholds) -> None:
        self.t = t
        self.recent: deque[float] = deque(maxlen=t.flat_steps)
        self._block: list[float] = []
        self.first_mean: float | None = None
        self.best_mean: float | None = None
        self.observed = 0
        self._since_flat_check = 0
        self._reported: set[str] = set()  # "diverging", "flat": each is reported once

    def add(self, step: int, loss: float) -> list[Finding]:
        """Add one step's (finite) loss; return the findings it completes."""
        self.observed += 1
        self.recent.append(loss)
        self._block.append(loss)
        self._since_flat_check += 1
        found = []
        if len(self._block) == self.t.loss_window:
            found.extend(self._once("diverging", self._window_done(step, fmean(self._block))))
            self._block = []
        if len(self.recent) == self.t.flat_steps and self._since_flat_check >= self.t.flat_steps:
            self._since_flat_check = 0
            found.extend(self._once("flat", self._flat(step)))
        return found

    def _once(self, what: str, found: list[Finding]) -> list[Finding]:
        if not found or what in self._reported:
            return []
        self._reported.add(what)
        return found

    def _window_done(self, step: int, mean: float) -> list[Finding]:
        first = self.first_mean = mean if self.first_mean is None else self.first_mean
        best = self.best_mean = mean if self.best_mean is None else min(self.best_mean, mean)
        if best > 0 and mean > self.t.diverge_factor * best and mean > first:
            return [_finding(
                "loss-trend", Severity.ERROR,
                f"the loss is diverging: its {self.t.loss_window}-step mean grew from "
                f"{best:.4g} to {mean:.4g} ({mean / best:.0f}x) by step {step}",
                f"step {step}",
                "lower the learning rate (try 10x lower), clip gradients, and check the "
                "sign of the loss (minimising what should be maximised)")]
        return []

    def _flat(self, step: int) -> list[Finding]:
        values = list(self.recent)
        half = len(values) // 2
        before, after = fmean(values[:half]), fmean(values[half:])
        if abs(after) < 1e-6 or after < before * (1 - self.t.flat_tolerance):
            return []
        start = step - len(values) + 1
        return [_finding(
            "loss-trend", Severity.WARNING,
            f"the loss did not decrease over steps {start}-{step} (mean {before:.4g} in the "
            f"first half, {after:.4g} in the second)", f"steps {start}-{step}",
            "unless the model has converged: check that the optimizer holds the model's "
            "parameters, that zero_grad/backward/step all run, and the learning rate (too "
            "low; or too high and oscillating); try overfitting one batch")]


def no_gradient_finding(layout: ParamLayout, peak: list[float] | None,
                        steps: int) -> Finding | None:
    """Parameters of the optimizer whose gradient was missing or zero at every step (the
    finding of :mod:`torchdoctor.diagnoses.parameters`)."""
    if peak is None:
        return None
    names = [name for name, value in zip(layout.names, peak) if value == 0]
    return parameters.no_gradient_finding(names, len(names) == len(layout.names), steps)
