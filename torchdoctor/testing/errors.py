"""The failure of every assertion helper, and the shortcuts that raise it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from torchdoctor.errors import DiagnosisError
from torchdoctor.findings import Finding, Severity
from torchdoctor.report import findings_table


class TorchDoctorAssertionError(AssertionError):
    """A torchdoctor assertion failed. ``findings`` holds what was found; the message
    is a one-line summary, the findings table and optional details."""

    def __init__(self, summary: str, *, findings: Sequence[Finding] = (),
                 details: str = "") -> None:
        self.summary = summary
        self.findings = list(findings)
        parts = [summary]
        if self.findings:
            parts.append(findings_table(self.findings))
        if details:
            parts.append(details)
        super().__init__("\n\n".join(parts))


def fail(summary: str, findings: Sequence[Finding] = (), details: str = "") -> NoReturn:
    """Raise :class:`TorchDoctorAssertionError` (hidden from pytest's traceback)."""
    __tracebackhide__ = True
    raise TorchDoctorAssertionError(summary, findings=findings, details=details)


def error(check: str, message: str, location: str = "", hint: str = "") -> Finding:
    """An error finding of the helper named ``check``."""
    return Finding(check, Severity.ERROR, message, location, hint)


def fail_from_diagnosis(exc: DiagnosisError, details: str = "") -> NoReturn:
    """Re-raise a validator's typed error as an assertion failure: the first line of its
    message as the summary, its findings as the table."""
    __tracebackhide__ = True
    summary = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    fail(summary, exc.findings, details)
