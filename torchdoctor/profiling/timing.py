"""Phase timing for your own loop: :func:`profile_steps` and its :class:`StepProfiler`."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torchdoctor.errors import UsageError
from torchdoctor.profiling.advice import advise
from torchdoctor.profiling.base import (
    DEFAULT_TOP,
    LABEL,
    PHASES,
    check_device,
    check_phase,
    is_cuda,
)
from torchdoctor.profiling.recording import Recording
from torchdoctor.profiling.report import LoaderInfo, ProfileReport

_END = object()


class PhaseClock:
    """Exclusive wall seconds per phase: entering a phase pauses the enclosing one.

    Time outside any phase is charged to ``other``. Each phase is also a
    ``record_function`` range so it shows in the profiler's trace.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._sync = sync
        self._stack: list[tuple[str, Any]] = [("other", None)]
        self._last = time.perf_counter()

    @property
    def current(self) -> str:
        """The phase being timed now."""
        return self._stack[-1][0]

    def _charge(self) -> None:
        if self._sync is not None:
            self._sync()
        now = time.perf_counter()
        self.seconds[self.current] += now - self._last
        self._last = now

    def enter(self, name: str) -> None:
        """Start timing ``name`` (pausing the current phase)."""
        from torch.profiler import record_function

        self._charge()
        label = record_function(LABEL + name)
        label.__enter__()
        self._stack.append((name, label))

    def leave(self) -> None:
        """Stop timing the innermost phase and resume the enclosing one."""
        self._charge()
        if len(self._stack) > 1:
            _, label = self._stack.pop()
            label.__exit__(None, None, None)

    def finish(self) -> None:
        """Charge the time up to now and close every open phase."""
        while len(self._stack) > 1:
            self.leave()
        self._charge()


class StepProfiler:
    """The profiler of :func:`profile_steps`; use it as a context manager.

    ``phase(name)`` times a block as one of :data:`PHASES`; ``batches(loader)`` yields
    batches, timing each fetch as ``data`` and counting steps; in a loop that does not
    use ``batches``, call ``step()`` at the end of each training step. After the
    ``with`` block, :meth:`report` returns the :class:`ProfileReport`.
    """

    def __init__(self, *, target: str = "training loop", device: str = "cpu",
                 trace: str | None = None, top: int = DEFAULT_TOP, loader: Any = None) -> None:
        self.target = target
        self.device = device
        self._recording = Recording(device, trace, top)
        self._loader = LoaderInfo.of(loader) if loader is not None else None
        self._clock: PhaseClock | None = None
        self._fetched = 0
        self._marked = 0
        self._report: ProfileReport | None = None

    def __enter__(self) -> StepProfiler:
        import torch

        check_device(self.device)
        self._recording.__enter__()
        sync = torch.cuda.synchronize if is_cuda(self.device) else None
        self._clock = PhaseClock(sync)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._running_clock().finish()
        self._recording.__exit__(*exc_info)
        if exc_info[0] is None:
            self._report = self._build()

    def _running_clock(self) -> PhaseClock:
        if self._clock is None:
            raise UsageError("use the profiler as a context manager: "
                             "`with profile_steps() as prof:`")
        return self._clock

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` ("data", "forward", "backward", "step", "other")."""
        check_phase(name)
        clock = self._running_clock()
        clock.enter(name)
        try:
            yield
        finally:
            clock.leave()

    def batches(self, loader: Iterable[Any], steps: int | None = None) -> Iterator[Any]:
        """Yield up to ``steps`` batches of ``loader`` (all when None), each fetch timed
        as ``data``; every batch counts as one step."""
        if self._loader is None:
            self._loader = LoaderInfo.of(loader)
        with self.phase("data"):  # starting worker processes is data-loading time too
            iterator = iter(loader)
        for index in itertools.count() if steps is None else range(steps):
            if index:
                self._recording.mark_step()
            with self.phase("data"):
                batch = next(iterator, _END)
            if batch is _END:
                return
            self._fetched += 1
            yield batch

    def step(self) -> None:
        """Mark the end of one training step (only needed without :meth:`batches`)."""
        self._running_clock()
        self._marked += 1
        self._recording.mark_step()

    def report(self) -> ProfileReport:
        """The report; available once the ``with`` block has exited normally."""
        if self._report is None:
            raise UsageError("the profile is not finished: call report() after the with block")
        return self._report

    def _build(self) -> ProfileReport:
        clock = self._running_clock()
        rec = self._recording
        report = ProfileReport(
            target=self.target, device=self.device, steps=max(self._fetched, self._marked),
            phase_seconds=dict(clock.seconds), top_ops=rec.top_ops, memory=rec.memory,
            trace_path=rec.trace_path, loader=self._loader or LoaderInfo(),
            device_seconds=rec.device_seconds)
        if not any(clock.seconds[p] for p in PHASES[:-1]):
            report.notes.append("no phase was marked: wrap parts of the step in "
                                "prof.phase('forward') ... to see the split")
        report.advice = advise(report)
        return report


def profile_steps(*, target: str = "training loop", device: str = "cpu",
                  trace: str | None = None, top: int = DEFAULT_TOP,
                  loader: Any = None) -> StepProfiler:
    """Profile your own training loop; mark its phases yourself::

        with profile_steps(trace="trace.json") as prof:
            for x, y in prof.batches(loader, steps=20):       # fetch timed as "data"
                with prof.phase("forward"):
                    loss = loss_fn(model(x), y)
                with prof.phase("backward"):
                    loss.backward()
                with prof.phase("step"):
                    optimizer.step()
                    optimizer.zero_grad()
        print(prof.report().table())

    ``device`` is where the loop computes (on CUDA phases are synchronised so each is
    charged its kernels); ``trace`` writes a Chrome trace; ``top`` is how many operators
    the report lists; ``loader`` (else the one given to ``batches``) informs the advice.
    """
    return StepProfiler(target=target, device=device, trace=trace, top=top, loader=loader)


__all__ = ["PhaseClock", "StepProfiler", "profile_steps"]
