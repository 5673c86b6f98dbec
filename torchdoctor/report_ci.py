"""Reports for CI: SARIF 2.1.0 (code scanning shows each finding on the user's line) and
GitHub Actions workflow commands (annotations on the pull request's diff).

A finding located at ``path:line`` points there; one located at a module
(``fc1 (Linear)``) points at the target's file, with the module named in the message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from torchdoctor.findings import TARGET_CHECK_ID, Finding, Report, Severity

if TYPE_CHECKING:
    from torchdoctor.findings import TargetFailure

SARIF_SCHEMA = ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
                "sarif-schema-2.1.0.json")
_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
_GITHUB_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning",
                   Severity.INFO: "notice"}
_PATH_LINE = re.compile(r"^(?P<path>[^\s:][^:]*\.py):(?P<line>\d+)")
_RUN_RULE = "the script run itself: it crashed, timed out, exited or needed input"


def finding_position(finding: Finding, target: str) -> tuple[str | None, int | None]:
    """The file and line a finding points at: its own ``path:line``, else the target's
    file (no line), else nothing (a ``package.module:name`` target)."""
    match = _PATH_LINE.match(finding.location)
    if match:
        return _posix(match["path"]), int(match["line"])
    file_part = target.partition("::")[0]
    return (_posix(file_part), None) if file_part.endswith(".py") else (None, None)


def _posix(path: str) -> str:
    return PurePath(path).as_posix()


def _text(finding: Finding, with_location: bool) -> str:
    where = f" (at {finding.location})" if with_location and finding.location else ""
    fix = f"\nFix: {finding.hint}" if finding.hint else ""
    return f"{finding.message}{where}{fix}"


def render_sarif(reports: Sequence[Report], failures: Sequence[TargetFailure] = (),
                 rules: dict[str, str] | None = None) -> str:
    """One SARIF 2.1.0 log, one run, a result per finding; a bad target is a failed
    invocation with its message as a tool notification."""
    from torchdoctor._version import __version__

    summaries = {TARGET_CHECK_ID: _RUN_RULE, **(rules or {})}
    used = sorted({f.check for r in reports for f in r.findings} | set(summaries))
    rule_index = {rule: i for i, rule in enumerate(used)}
    results = [_sarif_result(f, r.target, rule_index) for r in reports for f in r.findings]
    run: dict[str, Any] = {
        "tool": {"driver": {
            "name": "torchdoctor", "version": __version__,
            "rules": [{"id": rule, "shortDescription": {"text": summaries.get(rule, rule)}}
                      for rule in used],
        }},
        "invocations": [{
            "executionSuccessful": not failures,
            "toolExecutionNotifications": [
                {"level": "error", "message": {"text": f"{f.target}: {f.message}"}}
                for f in failures],
        }],
        "results": results,
    }
    log = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(log, indent=2)


def _sarif_result(finding: Finding, target: str, rule_index: dict[str, int]) -> dict[str, Any]:
    path, line = finding_position(finding, target)
    result: dict[str, Any] = {
        "ruleId": finding.check, "ruleIndex": rule_index[finding.check],
        "level": _SARIF_LEVEL[finding.severity],
        "message": {"text": _text(finding, with_location=line is None)},
    }
    if path is not None:
        physical: dict[str, Any] = {"artifactLocation": {"uri": path}}
        if line is not None:
            physical["region"] = {"startLine": max(line, 1)}
        result["locations"] = [{"physicalLocation": physical}]
    return result


def render_github(reports: Sequence[Report], failures: Sequence[TargetFailure] = ()) -> str:
    """GitHub Actions workflow commands, one line per finding
    (``::error file=train.py,line=42,title=torchdoctor nan-loss::...``)."""
    lines = [_github_line(f, r.target) for r in reports for f in r.findings]
    lines.extend(f"::error title=torchdoctor::{_escape_data(f'{f.target}: {f.message}')}"
                 for f in failures)
    clean = [r.target for r in reports if not r.findings]
    lines.extend(f"torchdoctor: {target}: no findings" for target in clean)
    return "\n".join(lines)


def _github_line(finding: Finding, target: str) -> str:
    path, line = finding_position(finding, target)
    properties = []
    if path is not None:
        properties.append(f"file={_escape_property(path)}")
    if line is not None:
        properties.append(f"line={line}")
    properties.append(f"title={_escape_property(f'torchdoctor {finding.check}')}")
    message = _escape_data(_text(finding, with_location=line is None))
    return f"::{_GITHUB_COMMAND[finding.severity]} {','.join(properties)}::{message}"


def _escape_data(text: str) -> str:
    """Escaping of a workflow command's message (as the Actions toolkit does)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """Escaping of a workflow command's property value."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


__all__ = ["finding_position", "render_github", "render_sarif"]
