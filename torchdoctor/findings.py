"""The result types every part of torchdoctor speaks: findings, check outcomes, reports.

Nothing here imports torch, so the CLI can build and render reports (and `--help`
stays fast) without it. The JSON form produced by :meth:`Report.to_dict` is a
documented, versioned format: bump :data:`SCHEMA_VERSION` on any incompatible change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from torchdoctor._version import __version__

SCHEMA_VERSION = 1

#: Check id used for findings about the run itself (the script crashed, timed out,
#: ran on synthetic data) rather than findings of one of the checks.
TARGET_CHECK_ID = "target"


class Severity(str, enum.Enum):
    """How bad a finding is. Only ERROR findings make ``torchdoctor check`` exit 1."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Sort key: errors first."""
        return {"error": 0, "warning": 1, "info": 2}[self.value]


class Outcome(str, enum.Enum):
    """What became of one check on one target."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CRASHED = "crashed"


class ExitCode(enum.IntEnum):
    """Documented exit codes of the ``torchdoctor`` command."""

    OK = 0  #: no error finding
    FINDINGS = 1  #: at least one error finding
    USAGE = 2  #: bad target or bad usage
    INTERNAL = 3  #: the doctor itself failed (a check crashed and nothing else was wrong)


@dataclass(frozen=True)
class Finding:
    """One thing wrong (or worth knowing) about the user's model or training code.

    ``location`` names where: ``file.py:42`` for code, ``fc1 (Linear)`` for a module,
    ``fc1.weight`` for a parameter. ``hint`` is the concrete fix.
    ``explains_crash`` is set by a check that recognised the exception which ended the
    user's script, so the run's own "script raised" finding is not repeated.
    """

    check: str
    severity: Severity
    message: str
    location: str = ""
    hint: str = ""
    explains_crash: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The finding as in the JSON report."""
        return {
            "check": self.check,
            "severity": self.severity.value,
            "message": self.message,
            "location": self.location,
            "hint": self.hint,
        }


@dataclass
class CheckResult:
    """The outcome of one check: its findings, how long it took, and why it was
    skipped or how it crashed (``detail``)."""

    id: str
    outcome: Outcome
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    detail: str = ""
    #: distinct warnings raised while it ran (``Category: first line``), e.g. by the
    #: user's model as the check ran copies of it
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The check entry as in the JSON report."""
        entry: dict[str, Any] = {
            "id": self.id,
            "outcome": self.outcome.value,
            "seconds": round(self.seconds, 3),
        }
        if self.detail:
            entry["detail"] = self.detail
        if self.warnings:
            entry["warnings"] = list(self.warnings)
        return entry


def outcome_for(findings: list[Finding]) -> Outcome:
    """A check fails when it has an error or warning finding; info alone passes."""
    if any(f.severity in (Severity.ERROR, Severity.WARNING) for f in findings):
        return Outcome.FAILED
    return Outcome.PASSED


@dataclass(frozen=True)
class WrittenFile:
    """A file a script-mode run wrote (to its scratch overlay, discarded afterwards) or
    a file of the user's it removed or renamed away (left untouched); see
    :mod:`torchdoctor.scriptrun.overlay`."""

    path: str  #: as the report shows it (relative to the working directory when below it)
    size: int | None  #: bytes written; None for a removed file
    action: str  #: "written" or "removed"

    def to_dict(self) -> dict[str, object]:
        """``{"path": ..., "size": ..., "action": ...}`` for the JSON report."""
        return {"path": self.path, "size": self.size, "action": self.action}


@dataclass
class Report:
    """Everything one diagnosis found: rendered by :mod:`torchdoctor.report`.

    ``mode`` is ``script`` (the file was run), ``model`` (only model checks),
    ``script+model``, or ``watch`` (built by :func:`torchdoctor.watch`).
    ``data`` says which data the checks used (``fashion-mnist`` or ``synthetic``).
    ``run_findings`` are findings about the run itself (check id ``target``).
    """

    target: str
    mode: str
    data: str = "none"
    #: per model trained in model mode, the training setup used ("your setup: ..." or
    #: "reference setup: ...")
    setups: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    seconds: float = 0.0
    checks: list[CheckResult] = field(default_factory=list)
    run_findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the phases of a script run (train, validate, test, predict, checkpoint) as JSON
    #: objects (see :func:`torchdoctor.scriptrun.phases.phase_dicts`); empty otherwise
    phases: list[dict[str, Any]] = field(default_factory=list)
    #: script mode: what the script would have written or removed (capped list)
    written: list[WrittenFile] = field(default_factory=list)
    #: how many more files than ``written`` lists
    written_more: int = 0

    @property
    def findings(self) -> list[Finding]:
        """All findings, errors first, in check order within a severity."""
        found = list(self.run_findings)
        for result in self.checks:
            found.extend(result.findings)
        return sorted(found, key=lambda f: f.severity.rank)

    @property
    def errors(self) -> list[Finding]:
        """The error findings only."""
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def crashed(self) -> list[CheckResult]:
        """Checks that raised instead of finishing."""
        return [r for r in self.checks if r.outcome is Outcome.CRASHED]

    @property
    def exit_code(self) -> ExitCode:
        """1 for any error finding; else 3 if a check crashed; else 0."""
        if self.errors:
            return ExitCode.FINDINGS
        if self.crashed:
            return ExitCode.INTERNAL
        return ExitCode.OK

    def result(self, check_id: str) -> CheckResult | None:
        """The result of one check by id, or None if it did not run."""
        return next((r for r in self.checks if r.id == check_id), None)

    def to_dict(self) -> dict[str, Any]:
        """The report in the documented JSON schema."""
        return {
            "schema": SCHEMA_VERSION,
            "torchdoctor_version": __version__,
            "target": self.target,
            "mode": self.mode,
            "data": self.data,
            "setups": dict(self.setups),
            "device": self.device,
            "seconds": round(self.seconds, 3),
            "checks": [r.to_dict() for r in self.checks],
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
            "phases": [dict(p) for p in self.phases],
            "written": [w.to_dict() for w in self.written],
            "written_more": self.written_more,
        }


@dataclass(frozen=True)
class TargetFailure:
    """A target that could not be diagnosed (no such file, not a target...): rendered
    in every format so machine readers get an answer too."""

    target: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of a bad target: the schema fields and ``error``."""
        from torchdoctor._version import __version__

        return {"schema": SCHEMA_VERSION, "torchdoctor_version": __version__,
                "target": self.target, "error": self.message}
