"""The profile's data: :class:`ProfileReport` and its parts, as text or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from torchdoctor.findings import SCHEMA_VERSION
from torchdoctor.profiling.base import PHASES, UNFINISHED, check_format
from torchdoctor.profiling.render import render_text


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
        return render_text(self, fmt)

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


__all__ = ["LoaderInfo", "OpRow", "ProfileReport"]
