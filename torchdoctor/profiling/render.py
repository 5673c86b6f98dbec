"""The human profile report: header, phase table, operator table, memory and advice."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from torchdoctor.profiling.base import PHASES, is_cuda
from torchdoctor.report import table

if TYPE_CHECKING:
    from torchdoctor.profiling.report import ProfileReport

_MB = 1024 * 1024
_MEMORY_LABELS = {"profiled_peak": "peak allocated by the profiled ops (CPU)",
                  "rss_growth": "process RSS high-water growth",
                  "cuda_peak": "CUDA max allocated"}


def render_text(report: ProfileReport, fmt: str) -> str:
    """The report as ``table`` (plain text) or ``markdown``."""
    parts = [_header(report, fmt), _phase_table(report, fmt), _ops_table(report, fmt),
             _memory_line(report), _advice_text(report, fmt)]
    if report.trace_path:
        parts.append(f"Chrome trace: {report.trace_path} (open it in https://ui.perfetto.dev "
                     "or chrome://tracing)")
    return "\n\n".join(p for p in parts if p)


def _header(report: ProfileReport, fmt: str) -> str:
    title = f"torchdoctor profile: {report.target}"
    per_step = f" ({report.seconds / report.steps * 1e3:.1f} ms/step)" if report.steps else ""
    facts = [f"device: {report.device}"]
    if report.data:
        facts.append(f"data: {report.data}")
    facts.append(f"{report.steps} steps")
    if report.loader.batch_size:
        facts.append(f"batch {report.loader.batch_size}")
    facts.append(f"{report.seconds:.2f}s{per_step}")
    lines = [f"## {title}" if fmt == "markdown" else title, " | ".join(facts)]
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


def _phase_table(report: ProfileReport, fmt: str) -> str:
    shares = report.shares
    rows = []
    for phase in PHASES:
        seconds = report.phase_seconds.get(phase, 0.0)
        per_step = f"{seconds / report.steps * 1e3:.2f}" if report.steps else ""
        rows.append([phase, f"{seconds:.3f}", f"{shares[phase]:.1%}", per_step])
    return table(rows, ["phase", "seconds", "share", "ms/step"], fmt)


def _ops_table(report: ProfileReport, fmt: str) -> str:
    if not report.top_ops:
        return ""
    on_device = is_cuda(report.device)
    headers = ["operator", "calls", "self CPU ms", "CPU total ms"]
    headers += ["self CUDA ms"] if on_device else []
    headers.append("self CPU mem")
    rows = []
    for op in report.top_ops:
        row = [_short(op.name), str(op.calls), f"{op.self_cpu_ms:.2f}", f"{op.cpu_total_ms:.2f}"]
        row += [f"{op.self_device_ms or 0.0:.2f}"] if on_device else []
        row.append(_bytes(op.self_cpu_memory))
        rows.append(row)
    return table(rows, headers, fmt)


def _memory_line(report: ProfileReport) -> str:
    parts = [f"{label} {_bytes(report.memory[key])}" for key, label in _MEMORY_LABELS.items()
             if key in report.memory]
    return "memory: " + "; ".join(parts) if parts else ""


def _advice_text(report: ProfileReport, fmt: str) -> str:
    if not report.advice:
        return "advice: none -- no phase dominates the step."
    if fmt == "markdown":
        return "**advice**\n\n" + "\n".join(f"- {text}" for text in report.advice)
    items = [textwrap.fill(text, 96, initial_indent=f"  {n}. ", subsequent_indent="     ")
             for n, text in enumerate(report.advice, 1)]
    return "advice:\n" + "\n".join(items)


def _short(name: str, width: int = 60) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def _bytes(count: int | None) -> str:
    if count is None:
        return ""
    if abs(count) >= _MB:
        return f"{count / _MB:.1f} MB"
    return f"{count / 1024:.1f} KB" if count else "0 B"


__all__ = ["render_text"]
