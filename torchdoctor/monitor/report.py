"""Building the :class:`~torchdoctor.findings.Report` of a watch, and its public figures."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from torchdoctor.findings import CheckResult, Finding, Outcome, Report, outcome_for
from torchdoctor.monitor.policy import KINDS


@dataclass
class WatchStats:
    """The figures a watch read so far (the latest ``history`` entries of each).

    Steps are 1-based optimizer steps. ``grad_norms`` holds one norm per parameter
    group (``groups`` names them); ``update_ratios`` is ``||delta w|| / ||w||`` per group
    at the steps where it was measured; ``losses`` is the mean loss passed to
    ``doc.loss`` before each step.
    """

    groups: list[str]
    steps: int = 0
    grad_norms: list[tuple[int, list[float]]] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)
    update_ratios: list[tuple[int, list[float]]] = field(default_factory=list)


class History:
    """Bounded host-side history of the figures (so a long run does not grow)."""

    def __init__(self, groups: list[str], size: int) -> None:
        self.groups = groups
        self.grad_norms: deque[tuple[int, list[float]]] = deque(maxlen=size)
        self.losses: deque[tuple[int, float]] = deque(maxlen=size)
        self.update_ratios: deque[tuple[int, list[float]]] = deque(maxlen=size)

    def snapshot(self, steps: int) -> WatchStats:
        """A copy as :class:`WatchStats`."""
        return WatchStats(list(self.groups), steps, list(self.grad_norms), list(self.losses),
                          list(self.update_ratios))


def build_report(target: str, device: str, seconds: float, findings: list[Finding],
                 skipped: dict[str, str], notes: list[str]) -> Report:
    """One :class:`CheckResult` per monitor id (in :data:`KINDS` order): failed with
    its findings, passed, or skipped with the reason in ``skipped``."""
    checks = []
    for kind in KINDS:
        own = [f for f in findings if f.check == kind]
        if not own and kind in skipped:
            checks.append(CheckResult(kind, Outcome.SKIPPED, detail=skipped[kind]))
        else:
            checks.append(CheckResult(kind, outcome_for(own), findings=own))
    return Report(target=target, mode="watch", device=device, seconds=seconds,
                  checks=checks, notes=notes)


def format_figures(values: list[float], labels: list[str]) -> str:
    """``group 0 0.0123, head 0.5`` (the label is dropped for a single group)."""
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return ", ".join(f"{label} {value:.3g}" for label, value in zip(labels, values))


def skipped_reasons(*, steps: int, losses_seen: int, trend_observed: int, ratios: int,
                    update_every: int, mode_sensitive: bool, forwards: int) -> dict[str, str]:
    """Why monitors had nothing to look at (monitor id -> reason)."""
    skipped = {}
    if steps == 0:
        reason = "no optimizer step was watched"
        skipped.update(dict.fromkeys(
            ("gradient-norm", "no-gradient", "missing-zero-grad", "update-ratio"), reason))
        if not losses_seen:
            skipped["nan-loss"] = reason
    if trend_observed == 0:
        skipped["loss-trend"] = "no loss observed: pass it through doc.loss(loss)"
    if not ratios:
        skipped.setdefault("update-ratio", "not measured yet" if update_every
                           else "disabled (update_every=0)")
    if not mode_sensitive:
        skipped["eval-mode"] = "no dropout/batch-norm: train/eval mode changes nothing"
    elif forwards == 0:
        skipped["eval-mode"] = "no forward of the model was observed"
    return skipped


def watch_notes(history: History, steps: int, every: int, distributed: bool) -> list[str]:
    """The report's notes: steps watched and the latest figures."""
    notes = [f"{steps} optimizer step(s) watched; figures read every {every} step(s)"]
    if history.grad_norms:
        step, norms = history.grad_norms[-1]
        notes.append(f"gradient norm at step {step}: {format_figures(norms, history.groups)}")
    if history.update_ratios:
        step, ratios = history.update_ratios[-1]
        notes.append(f"update/weight ratio at step {step}: "
                     f"{format_figures(ratios, history.groups)}")
    if distributed:
        notes.append("figures are all-reduced over the ranks of torch.distributed")
    return notes
