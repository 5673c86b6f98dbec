"""Assertions shared by the tests."""

from __future__ import annotations

from pathlib import Path

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


def line_starting(path: Path, code: str) -> int:
    """The 1-based number of the first line of ``path`` whose code starts with ``code``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip().startswith(code))


def line_containing(path: Path, text: str) -> int:
    """The 1-based number of the first line of ``path`` that contains ``text``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)
