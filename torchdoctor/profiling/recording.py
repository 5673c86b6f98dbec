"""torch.profiler around a block: the heaviest operators, memory peaks, a Chrome trace."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torchdoctor.errors import UsageError
from torchdoctor.profiling.base import INTERNAL, LABEL, is_cuda
from torchdoctor.profiling.report import OpRow


class Recording:
    """torch.profiler around a block, plus memory high-water marks; results after exit."""

    def __init__(self, device: str, trace: str | None, top: int) -> None:
        self.device = device
        self.trace = trace
        self.top = top
        self.top_ops: list[OpRow] = []
        self.memory: dict[str, int] = {}
        self.device_seconds: float | None = None
        self.trace_path: str | None = None
        self._prof: Any = None
        self._rss_before: int | None = None

    def __enter__(self) -> Recording:
        import torch
        from torch.profiler import ProfilerActivity, profile

        if torch.autograd.profiler._is_profiler_enabled:
            raise UsageError("another torch profiler is already running; torchdoctor's "
                             "profiling cannot nest inside it")
        activities = [ProfilerActivity.CPU]
        if is_cuda(self.device):
            activities.append(ProfilerActivity.CUDA)
            # the peak we report is the profiled steps' own, not the process's so far
            torch.cuda.reset_peak_memory_stats(self.device)
        self._rss_before = _rss_high_water()
        self._prof = profile(activities=activities, profile_memory=True)
        self._prof.__enter__()
        return self

    def mark_step(self) -> None:
        """Tell the profiler a step ended (``ProfilerStep#N`` ranges in the trace)."""
        self._prof.step()

    def __exit__(self, *exc_info: object) -> None:
        import torch

        if is_cuda(self.device):
            torch.cuda.synchronize(self.device)
        rss_after = _rss_high_water()  # before the profiler's own post-processing
        self._prof.__exit__(*exc_info)
        if exc_info[0] is not None:
            return
        self._collect(rss_after)

    def _collect(self, rss_after: int | None) -> None:
        import torch

        events = self._prof.events()
        kept = [ev for ev in events if not _skipped(ev)]
        self.top_ops = _top_ops(kept, self.top, is_cuda(self.device))
        self.memory = _memory(self._prof, self._rss_before, rss_after)
        if is_cuda(self.device):
            self.memory["cuda_peak"] = int(torch.cuda.max_memory_allocated(self.device))
            self.device_seconds = sum(ev.self_device_time_total for ev in kept) / 1e6
        if self.trace:
            Path(self.trace).parent.mkdir(parents=True, exist_ok=True)
            self._prof.export_chrome_trace(str(self.trace))
            self.trace_path = str(self.trace)


def _skipped(event: Any) -> bool:
    """Our own ranges, profiler markers, and anything inside the doctor's bookkeeping."""
    name = event.name
    if name.startswith((LABEL, "ProfilerStep#", "[memory]")):
        return True
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == INTERNAL:
            return True
        parent = parent.cpu_parent
    return False


def _top_ops(events: Iterable[Any], limit: int, by_device: bool) -> list[OpRow]:
    """Aggregate events by name; the ``limit`` heaviest by self CPU (or device) time."""
    totals: dict[str, list[float]] = {}
    for ev in events:
        row = totals.setdefault(ev.name, [0, 0.0, 0.0, 0.0, 0])
        row[0] += 1
        row[1] += ev.self_cpu_time_total
        row[2] += ev.cpu_time_total
        row[3] += ev.self_device_time_total if by_device else 0.0
        row[4] += ev.self_cpu_memory_usage
    key = 3 if by_device else 1
    ranked = sorted(totals.items(), key=lambda item: item[1][key], reverse=True)[:limit]
    return [OpRow(name, int(r[0]), r[1] / 1e3, r[2] / 1e3,
                  r[3] / 1e3 if by_device else None, int(r[4]))
            for name, r in ranked]


def _memory(prof: Any, rss_before: int | None, rss_after: int | None) -> dict[str, int]:
    memory: dict[str, int] = {}
    peak = _profiled_peak(prof)
    if peak is not None:
        memory["profiled_peak"] = peak
    if rss_before is not None and rss_after is not None:
        memory["rss_growth"] = max(0, rss_after - rss_before)
    return memory


def _profiled_peak(prof: Any) -> int | None:
    """Peak of CPU bytes held by allocations made while profiling (running sum of the
    profiler's ``[memory]`` events in time order). None when the API is not there."""
    import torch

    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:
        return None
    cpu = torch.autograd.DeviceType.CPU
    changes = sorted((ev.start_ns(), ev.nbytes()) for ev in events
                     if ev.name() == "[memory]" and ev.device_type() == cpu)
    held = peak = 0
    for _, nbytes in changes:
        held += nbytes
        peak = max(peak, held)
    return peak


def _rss_high_water() -> int | None:
    """The process's peak resident set size in bytes (None where unsupported)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


__all__ = ["Recording"]
