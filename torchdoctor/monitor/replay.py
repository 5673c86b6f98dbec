"""A first NaN/inf as findings, localised by replaying that step.

Per-module hooks are too costly to leave on every step; instead the watch keeps a
reference to the inputs of the step in flight, and when its figures turn non-finite it
replays that forward on a copy of the model with
:func:`torchdoctor.hooks.localize_nonfinite` (RNG forked, the user's model untouched).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from torchdoctor.diagnoses.nonfinite import loss_made_it_finding
from torchdoctor.findings import Finding
from torchdoctor.monitor.analysis import NonFiniteEvent, nonfinite_finding
from torchdoctor.monitor.stats import Window

Inputs = tuple[tuple[Any, ...], dict[str, Any]]


def nonfinite_findings(event: NonFiniteEvent, window: Window, model: nn.Module,
                       inputs: Inputs | None, replayed: list[Finding] | None = None,
                       ) -> list[Finding]:
    """The finding for ``event`` and those of the replay of its step: ``replayed`` when
    it was replayed already, else now if the inputs of that step are still held (and
    this rank's own figures were non-finite)."""
    finding = nonfinite_finding(event, window.world)
    if window.world > 1 and window.local_finite:
        return [_extend(finding, "; this rank's own figures were finite: it arose on "
                        "another rank")]
    if replayed is None:
        replayed = replay(event, model, inputs)
    if replayed is None:
        finding = _extend(finding, "; not localised: the inputs of that step were no "
                          "longer held (on an accelerator, every=1 localises the step)")
    return [finding, *(replayed or [])]


def replay(event: NonFiniteEvent, model: nn.Module, inputs: Inputs | None,
           ) -> list[Finding] | None:
    """Replay the forward of ``event``'s step on a copy with per-module hooks; None when
    impossible (another step's inputs, or inputs passed as keywords)."""
    if not event.latest or inputs is None or inputs[1]:
        return None
    from torchdoctor.hooks import localize_nonfinite

    report = localize_nonfinite(model, inputs[0])
    prefix = f"replaying step {event.step}: "
    found = [_prefix(f, prefix) for f in report.findings]
    if not found and report.output_finite and event.kind == "loss":
        found.append(loss_made_it_finding(prefix=prefix))
    return found


def _prefix(finding: Finding, text: str) -> Finding:
    return dataclasses.replace(finding, message=text + finding.message)


def _extend(finding: Finding, text: str) -> Finding:
    return dataclasses.replace(finding, message=finding.message + text)
