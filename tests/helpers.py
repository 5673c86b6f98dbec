"""Assertions shared by the tests."""

from __future__ import annotations

from torchdoctor.findings import Finding, Outcome, Report


def findings_of(report: Report, check: str) -> list[Finding]:
    """The findings of one check."""
    return [f for f in report.findings if f.check == check]


def assert_ran_quiet(report: Report, check: str) -> None:
    """``check`` ran to the end and found nothing: a check that was skipped or crashed
    is not quiet, it did not look."""
    result = report.result(check)
    assert result is not None, f"{check} did not run: {[r.id for r in report.checks]}"
    assert result.outcome is Outcome.PASSED, f"{check} {result.outcome.value}: {result.detail}"
    assert findings_of(report, check) == []
