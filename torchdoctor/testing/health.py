"""Whole-model diagnosis as an assertion: ``assert_report_ok`` and ``assert_healthy``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from torchdoctor.findings import Outcome, Report, Severity
from torchdoctor.report import render_text
from torchdoctor.testing.errors import fail
from torchdoctor.testing.trial import LossFn, OptimizerFactory

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckOptions


def assert_report_ok(report: Report, *, strict: bool = False) -> Report:
    """Fail when ``report`` has an error finding (with ``strict``, a warning too) or a
    check crashed; the message is the full report. Returns the report."""
    __tracebackhide__ = True
    levels = (Severity.ERROR, Severity.WARNING) if strict else (Severity.ERROR,)
    bad = [f for f in report.findings if f.severity in levels]
    crashed = [r for r in report.checks if r.outcome is Outcome.CRASHED]
    if not bad and not crashed:
        return report
    what = [f"{len(bad)} finding(s)"] if bad else []
    what += [f"{len(crashed)} crashed check(s)"] if crashed else []
    fail(f"torchdoctor found problems in {report.target}: {', '.join(what)}",
         details=render_text(report))


def assert_healthy(model: nn.Module, *, select: Sequence[str] | None = None,
                   ignore: Sequence[str] | None = None, batch: Any = None,
                   loss_fn: LossFn | None = None,
                   optimizer_factory: OptimizerFactory | None = None,
                   options: CheckOptions | None = None, strict: bool = False,
                   name: str = "model") -> Report:
    """Run torchdoctor's model checks on copies of ``model`` and fail on any error
    finding (with ``strict``, on warnings too) or crashed check.

    ``batch``/``loss_fn``/``optimizer_factory`` adapt the checks to a model that is not
    a FashionMNIST classifier (defaults: a FashionMNIST batch of 64, CrossEntropyLoss,
    Adam 1e-3). ``select``/``ignore`` take check ids. Returns the report.
    """
    __tracebackhide__ = True
    from torchdoctor.engine.runner import diagnose_model

    report = diagnose_model(model, batch=batch, loss_fn=loss_fn,
                            optimizer_factory=optimizer_factory, options=options,
                            select=select, ignore=ignore, name=name)
    return assert_report_ok(report, strict=strict)
