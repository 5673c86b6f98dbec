"""Rendering reports: table, markdown and JSON (SARIF and GitHub annotations live in
:mod:`torchdoctor.report_ci`). The only module that imports tabulate.

Renderers take a :class:`~torchdoctor.findings.Report` (or several, one per target) and
return text; they never print and never decide exit codes. The text report fits a
terminal ``width`` columns wide: the findings are a table where the message and fix
columns get room enough, else one block per finding (location first, as ``path:line``
so terminals and editors can jump to it).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from torchdoctor.findings import (
    Finding,
    Outcome,
    Report,
    Severity,
    TargetFailure,
)

#: the formats of every report (check, profile, reference)
FORMATS = ("table", "json", "markdown")
#: the formats of ``torchdoctor check``: the human ones and the CI ones
CHECK_FORMATS = (*FORMATS, "sarif", "github")

_OUTCOME_MARK = {
    Outcome.PASSED: "ok",
    Outcome.FAILED: "FAILED",
    Outcome.SKIPPED: "skipped",
    Outcome.CRASHED: "CRASHED",
}

#: below this many columns for the finding and the fix each, findings become blocks
_MIN_TEXT_COLUMN = 36
_GAP = 2  # tabulate's "simple" style puts two spaces between columns

_SGR = {"error": "1;31", "warning": "33", "info": "36", "FAILED": "1;31", "CRASHED": "1;35",
        "ok": "32", "dim": "2", "bold": "1"}


@dataclass(frozen=True)
class Style:
    """How text is drawn: ``width`` columns, ANSI colour or not."""

    width: int = 80
    color: bool = False

    def paint(self, text: str, key: str) -> str:
        """``text`` in the colour of ``key`` (a severity, an outcome mark), if on."""
        code = _SGR.get(key)
        return f"\033[{code}m{text}\033[0m" if self.color and code and text else text


def terminal_width() -> int:
    """Columns of the terminal (``COLUMNS`` first), 80 when there is none."""
    return max(shutil.get_terminal_size((80, 24)).columns, 40)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], fmt: str = "table") -> str:
    """A plain table (``simple`` style) or a GitHub markdown table (``markdown``)."""
    style = "github" if fmt == "markdown" else "simple"
    return tabulate(rows, headers=list(headers), tablefmt=style, disable_numparse=True)


def fitted_table(rows: Sequence[Sequence[str]], headers: Sequence[str],
                 width: int | None = None) -> str:
    """A plain table whose last column is wrapped so the table fits ``width`` columns
    (default: the terminal's); the other columns keep their width."""
    width = width or terminal_width()
    fixed = sum(max([len(h) + 2, *(len(r[i]) for r in rows)])
                for i, h in enumerate(headers[:-1])) + _GAP * (len(headers) - 1)
    room = max(width - fixed, 20)
    return table([[*r[:-1], _fill(r[-1], room, breaking=True)] for r in rows], headers)


def render(reports: Sequence[Report], fmt: str = "table", *,
           failures: Sequence[TargetFailure] = (), width: int | None = None,
           color: bool = False, rules: dict[str, str] | None = None) -> str:
    """Render reports (and targets that failed) in one of :data:`CHECK_FORMATS`.
    ``width``: terminal columns (default: the terminal's); ``color``: ANSI colours;
    ``rules``: check id -> summary, for SARIF's rule descriptions."""
    if fmt == "json":
        return render_json(reports, failures)
    if fmt in ("sarif", "github"):
        from torchdoctor.report_ci import render_github, render_sarif

        if fmt == "sarif":
            return render_sarif(reports, failures, rules or {})
        return render_github(reports, failures)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(CHECK_FORMATS)}")
    style = Style(width or terminal_width(), color)
    parts = [_render_text(report, fmt, style) for report in reports]
    parts.extend(f"torchdoctor: {f.target}: {f.message}" for f in failures)
    return "\n\n".join(parts)


def render_json(reports: Sequence[Report], failures: Sequence[TargetFailure] = ()) -> str:
    """One target as a JSON object; several as a JSON array of them. A bad target is an
    object with an ``error`` field."""
    payload: Any = [r.to_dict() for r in reports] + [f.to_dict() for f in failures]
    if len(payload) == 1:
        payload = payload[0]
    return json.dumps(payload, indent=2)


def render_text(report: Report, fmt: str = "table", width: int | None = None,
                color: bool = False) -> str:
    """The human report: a header, one row per check, then the findings."""
    return _render_text(report, fmt, Style(width or terminal_width(), color))


def _render_text(report: Report, fmt: str, style: Style) -> str:
    parts = [_header(report, fmt, style), checks_table(report, fmt, style)]
    if report.findings:
        parts.append(_findings(report.findings, fmt, style))
    parts.extend(_details(report, fmt, style))
    parts.append(_summary(report, style))
    return "\n\n".join(p for p in parts if p)


_LISTED_FILES = 8  # files named in the text report (the JSON lists more)


def _header(report: Report, fmt: str, style: Style) -> str:
    title = f"torchdoctor: {report.target}"
    facts = (f"mode: {report.mode} | data: {report.data} | device: {report.device} | "
             f"{report.seconds:.1f}s")
    lines = [f"## {title}" if fmt == "markdown" else style.paint(title, "bold"),
             facts if fmt == "markdown" else _fill(facts, style.width, "", "  ")]
    setups = [f"setup: {name}: {setup}" if len(report.setups) > 1 else f"setup: {setup}"
              for name, setup in report.setups.items()]
    files = written_line(report)
    for line in [*setups, *phase_lines(report), *(f"note: {note}" for note in report.notes),
                 *([files] if files else [])]:
        # continuation lines start under the text after the label ("phases: ", "note: ")
        indent = " " * (line.index(": ") + 2)
        lines.append(line if fmt == "markdown" else _fill(line, style.width, "", indent))
    return "\n".join(lines)


def phase_lines(report: Report) -> list[str]:
    """``phases: train (10 passes, 16 batches), ...`` and one ``cut:`` line per phase the
    program was cut short in; nothing for a report without a script run."""
    if not report.phases:
        return []
    parts = []
    for phase in report.phases:
        if phase["phase"] == "checkpoint":
            parts.append(f"checkpoint ({phase.get('detail', '')})")
        elif phase["passes"]:
            passes = "pass" if phase["passes"] == 1 else "passes"
            batches = "batch" if phase["batches"] == 1 else "batches"
            capped = ", capped" if phase["capped"] else ""
            parts.append(f"{phase['phase']} ({phase['passes']} {passes}, "
                         f"{phase['batches']} {batches}{capped})")
        else:
            calls = "call" if phase["calls"] == 1 else "calls"
            parts.append(f"{phase['phase']} ({phase['calls']} {calls})")
    lines = ["phases: " + ", ".join(parts)]
    lines.extend(f"cut: {p['phase']}: {p['cut']}" for p in report.phases if p["cut"])
    return lines


def written_line(report: Report, listed: int = _LISTED_FILES) -> str:
    """``files: ...``: what a script-mode run's script wrote to the scratch overlay (and
    which of the user's files it removed there), or ``""`` when it wrote nothing."""
    if not report.written:
        return ""
    wrote = [f"{w.path} ({_size(w.size or 0)})" for w in report.written
             if w.action == "written"]
    removed = [w.path for w in report.written if w.action != "written"]
    shown = (wrote + [f"removed {path}" for path in removed])[:listed]
    more = len(report.written) - len(shown) + report.written_more
    return ("files: the script's writes went to a scratch copy, discarded after the run "
            "(your files are unchanged): " + ", ".join(shown) +
            (f" and {more} more" if more else ""))


def _size(size: int) -> str:
    """``812 B``, ``4.6 MB``."""
    if size < 1000:
        return f"{size} B"
    value, unit = size / 1e3, "kB"
    for bigger in ("MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1e3, bigger
    return f"{value:.1f} {unit}"


def checks_table(report: Report, fmt: str = "table", style: Style | None = None) -> str:
    """One row per check: id, outcome, seconds, number of findings."""
    style = style or Style()
    rows = [[r.id, style.paint(_OUTCOME_MARK[r.outcome], _OUTCOME_MARK[r.outcome]),
             f"{r.seconds:.2f}s", len(r.findings) or ""] for r in report.checks]
    return table(rows, ["check", "outcome", "time", "findings"], fmt)


def findings_table(findings: Sequence[Finding], fmt: str = "table",
                   width: int | None = None, color: bool = False) -> str:
    """The findings, fitted to ``width`` columns (default: the terminal's): a table
    (location, severity, check, finding, fix) when the text columns get room enough,
    else one block per finding."""
    return _findings(findings, fmt, Style(width or terminal_width(), color))


def _findings(findings: Sequence[Finding], fmt: str, style: Style) -> str:
    if fmt == "markdown":
        rows = [[_md(f.location), f.severity.value, f.check, _md(f.message), _md(f.hint)]
                for f in findings]
        return table(rows, ["location", "severity", "check", "finding", "fix"], fmt)
    # paths are never broken (they stay clickable): a long one makes room for itself;
    # tabulate pads a header by 2, so a column is at least its header's width + 2
    location = max([len("location") + 2, *(len(f.location) for f in findings)])
    check = max([len("check") + 2, *(len(f.check) for f in findings)])
    fixed = location + len("severity") + 2 + check + 4 * _GAP
    text_width = (style.width - fixed) // 2
    if text_width < _MIN_TEXT_COLUMN:
        return "\n\n".join(_block(f, style) for f in findings)
    rows = [[f.location, style.paint(f.severity.value, f.severity.value),
             f.check, _fill(f.message, text_width, breaking=True),
             _fill(f.hint, text_width, breaking=True)]
            for f in findings]
    return table(rows, ["location", "severity", "check", "finding", "fix"])


def _block(finding: Finding, style: Style) -> str:
    """``path:line: error [check]`` then the message and the fix, indented, wrapped."""
    where = f"{finding.location}: " if finding.location else ""
    head = f"{where}{style.paint(finding.severity.value, finding.severity.value)} " \
           f"[{finding.check}]"
    lines = [head, _fill(finding.message, style.width, "    ", "    ")]
    if finding.hint:
        lines.append(_fill(f"fix: {finding.hint}", style.width, "    ", "         "))
    return "\n".join(lines)


def _details(report: Report, fmt: str, style: Style) -> list[str]:
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
    return ["\n".join(_fill(line, style.width, "", "    ") for line in lines)]


def _summary(report: Report, style: Style) -> str:
    counts = {o: sum(1 for r in report.checks if r.outcome is o) for o in Outcome}
    errors = len(report.errors)
    summary = ", ".join(f"{n} {o.value}" for o, n in counts.items() if n)
    verdict = style.paint(f"{errors} error finding(s)", Severity.ERROR.value) if errors \
        else "no error findings"
    return f"{summary or 'no checks ran'}; {verdict}."


def _fill(text: str, width: int, first: str = "", rest: str = "", *,
          breaking: bool = False) -> str:
    """``text`` wrapped at ``width`` columns, each of its own lines kept. Long words
    (paths) are not broken, so they stay clickable, unless ``breaking`` (a table cell,
    which must keep its width)."""
    if not text:
        return ""
    wrapped = []
    for number, line in enumerate(text.splitlines()):
        wrapped.append(textwrap.fill(line, width, initial_indent=first if number == 0 else rest,
                                     subsequent_indent=rest, break_long_words=breaking,
                                     break_on_hyphens=False))
    return "\n".join(wrapped)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")
