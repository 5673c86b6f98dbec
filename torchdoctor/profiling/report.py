"""The profile's data: :class:`ProfileReport` and its parts, as text or JSON.

The text rendering lives here with the data it renders (header, phase table, operator
table, memory and advice): kept in a module of its own it needed the report's type while
the report needed it, an import cycle."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Any

from torchdoctor.findings import SCHEMA_VERSION
from torchdoctor.profiling.base import PHASES, UNFINISHED, check_format, is_cuda
from torchdoctor.report import table


@dataclass(frozen=True)
class OpRow:
    """One operator, aggregated over the profiled steps (times in milliseconds)."""

    name: str
    calls: int
    self_cpu_ms: float
    cpu_total_ms: float
    self_device_ms: float | None = None
    #: bytes the operator itself allocated, net of what it freed (None: not recorded)
    self_cpu_memory: int | None = None


@dataclass(frozen=True)
class LoaderInfo:
    """What the advice knows of the DataLoader (None: unknown)."""

    batch_size: int | None = None
    num_workers: int | None = None
    pin_memory: bool | None = None

    @classmethod
    def of(cls, loader: Any) -> LoaderInfo:
        """Read ``batch_size``, ``num_workers`` and ``pin_memory`` off a DataLoader."""
        return cls(getattr(loader, "batch_size", None), getattr(loader, "num_workers", None),
                   getattr(loader, "pin_memory", None))


@dataclass
class ProfileReport:
    """Where the time of the profiled steps went, and what to do about it.

    ``phase_seconds`` has one entry per name in :data:`PHASES`; ``memory`` holds byte
    counts: ``profiled_peak`` (peak of CPU memory allocated by the profiled operators),
    ``rss_growth`` (how much the process's RSS high-water mark rose), ``cuda_peak``
    (``torch.cuda.max_memory_allocated`` over the profile, on GPU).
    """

    target: str
    device: str = "cpu"
    steps: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    top_ops: list[OpRow] = field(default_factory=list)
    memory: dict[str, int] = field(default_factory=dict)
    advice: list[str] = field(default_factory=list)
    trace_path: str | None = None
    data: str = ""
    loader: LoaderInfo = field(default_factory=LoaderInfo)
    #: seconds some device kernel ran (sum over all operators); None on CPU
    device_seconds: float | None = None
    #: what was profiled: "loop" (your own), "reference" or "script"
    kind: str = "loop"
    #: how the profiled script ended ("completed", "crashed"...); "completed" for loops
    status: str = "completed"
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Profiled wall seconds (the sum of the phases)."""
        return sum(self.phase_seconds.values())

    @property
    def shares(self) -> dict[str, float]:
        """Each phase's fraction of :attr:`seconds` (they sum to 1; all 0 when empty)."""
        total = self.seconds
        return {p: (self.phase_seconds.get(p, 0.0) / total if total else 0.0) for p in PHASES}

    @property
    def finished(self) -> bool:
        """False when the profiled script crashed, timed out or exited with an error."""
        return self.status not in UNFINISHED

    def table(self, fmt: str = "table") -> str:
        """The human report (``table`` or ``markdown``), or ``json``."""
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2)
        check_format(fmt)
        return _render_text(self, fmt)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""
        shares = self.shares
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "profile",
            "profiled": self.kind,
            "target": self.target,
            "device": self.device,
            "data": self.data,
            "status": self.status,
            "steps": self.steps,
            "seconds": round(self.seconds, 6),
            "phases": {p: {"seconds": round(self.phase_seconds.get(p, 0.0), 6),
                           "share": round(shares[p], 4)} for p in PHASES},
            "top_ops": [asdict(row) for row in self.top_ops],
            "memory": dict(self.memory),
            "device_seconds": self.device_seconds,
            "loader": asdict(self.loader),
            "advice": list(self.advice),
            "trace": self.trace_path,
            "notes": list(self.notes),
        }


_MB = 1024 * 1024
_MEMORY_LABELS = {"profiled_peak": "peak allocated by the profiled ops (CPU)",
                  "rss_growth": "process RSS high-water growth",
                  "cuda_peak": "CUDA max allocated"}


def _render_text(report: ProfileReport, fmt: str) -> str:
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


__all__ = ["LoaderInfo", "OpRow", "ProfileReport"]
