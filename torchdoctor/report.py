"""Rendering reports: table, markdown and JSON. The only module that imports tabulate.

Renderers take a :class:`~torchdoctor.findings.Report` (or several, one per target) and
return text; they never print and never decide exit codes.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from torchdoctor.findings import Finding, Outcome, Report

FORMATS = ("table", "json", "markdown")

_OUTCOME_MARK = {
    Outcome.PASSED: "ok",
    Outcome.FAILED: "FAILED",
    Outcome.SKIPPED: "skipped",
    Outcome.CRASHED: "CRASHED",
}

_WRAP = 60


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], fmt: str = "table") -> str:
    """A plain table (``simple`` style) or a GitHub markdown table (``markdown``)."""
    style = "github" if fmt == "markdown" else "simple"
    return tabulate(rows, headers=list(headers), tablefmt=style, disable_numparse=True)


def render(reports: Sequence[Report], fmt: str = "table") -> str:
    """Render one or more reports in ``fmt`` (``table``, ``json`` or ``markdown``)."""
    if fmt == "json":
        return render_json(reports)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return "\n\n".join(render_text(report, fmt) for report in reports)


def render_json(reports: Sequence[Report]) -> str:
    """One report as a JSON object; several as a JSON array of them."""
    payload: Any = [r.to_dict() for r in reports]
    if len(payload) == 1:
        payload = payload[0]
    return json.dumps(payload, indent=2)


def render_text(report: Report, fmt: str = "table") -> str:
    """The human report: a header, one row per check, then the findings."""
    parts = [_header(report, fmt), checks_table(report, fmt)]
    if report.findings:
        parts.append(findings_table(report.findings, fmt))
    parts.extend(_details(report, fmt))
    parts.append(_summary(report))
    return "\n\n".join(p for p in parts if p)


def _header(report: Report, fmt: str) -> str:
    title = f"torchdoctor: {report.target}"
    facts = (f"mode: {report.mode} | data: {report.data} | device: {report.device} | "
             f"{report.seconds:.1f}s")
    lines = [f"## {title}" if fmt == "markdown" else title, facts]
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


def checks_table(report: Report, fmt: str = "table") -> str:
    """One row per check: id, outcome, seconds, number of findings."""
    rows = [
        [r.id, _OUTCOME_MARK[r.outcome], f"{r.seconds:.2f}s", len(r.findings) or ""]
        for r in report.checks
    ]
    return table(rows, ["check", "outcome", "time", "findings"], fmt)


def findings_table(findings: Sequence[Finding], fmt: str = "table") -> str:
    """One row per finding: severity, check, location, message and fix."""
    rows = [
        [f.severity.value, f.check, _wrap(f.location, 28, fmt), _wrap(f.message, _WRAP, fmt),
         _wrap(f.hint, _WRAP, fmt)]
        for f in findings
    ]
    return table(rows, ["severity", "check", "location", "finding", "fix"], fmt)


def _details(report: Report, fmt: str) -> list[str]:
    """Why checks were skipped, and how crashed ones crashed."""
    lines = []
    for r in report.checks:
        if r.detail and r.outcome in (Outcome.SKIPPED, Outcome.CRASHED):
            first_line = r.detail.strip().splitlines()[-1] if r.outcome is Outcome.CRASHED \
                else r.detail
            lines.append(f"{r.id} {r.outcome.value}: {first_line}")
    if not lines:
        return []
    if fmt == "markdown":
        return ["\n".join(f"- {line}" for line in lines)]
    return ["\n".join(lines)]


def _summary(report: Report) -> str:
    counts = {o: sum(1 for r in report.checks if r.outcome is o) for o in Outcome}
    errors = len(report.errors)
    summary = ", ".join(f"{n} {o.value}" for o, n in counts.items() if n)
    verdict = f"{errors} error finding(s)" if errors else "no error findings"
    return f"{summary or 'no checks ran'}; {verdict}."


def _wrap(text: str, width: int, fmt: str) -> str:
    if fmt == "markdown":
        return text.replace("|", "\\|").replace("\n", "<br>")
    return "\n".join(textwrap.fill(line, width) for line in text.splitlines()) if text else ""
