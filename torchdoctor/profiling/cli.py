"""``torchdoctor profile [TARGET]``: profile the reference trainer or a script, print it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torchdoctor.cli.output import write
from torchdoctor.engine.context import (
    DEFAULT_LIMIT_BATCHES,
    DEFAULT_MAX_STEPS,
    DEFAULT_SEED,
    DEFAULT_TIMEOUT,
)
from torchdoctor.errors import UsageError
from torchdoctor.profiling.base import check_count, check_format
from torchdoctor.profiling.reference import profile_reference
from torchdoctor.profiling.report import ProfileReport
from torchdoctor.profiling.script import profile_script


def run_profile_cli(target: str | None, *, steps: int = DEFAULT_MAX_STEPS,
                    data: str | None = None, device: str = "cpu", seed: int = DEFAULT_SEED,
                    fmt: str = "table", trace: str | None = None, quiet: bool = False,
                    timeout: float = DEFAULT_TIMEOUT,
                    limit_batches: int = DEFAULT_LIMIT_BATCHES, num_workers: int = 0,
                    script_args: Sequence[str] = ()) -> int:
    """``torchdoctor profile [TARGET]``: print the profile of the reference trainer
    (TARGET omitted or ``reference``) or of a training script; return the exit code.

    ``steps`` training steps are profiled: for a script, the run stops after ``steps``
    optimizer steps. The other options are ``torchdoctor check``'s run options.
    0: profiled; 1: the script crashed or timed out (the part that ran is shown);
    2: bad target or options (one line on stderr). ``quiet``: no progress line.
    """
    if not quiet and sys.stderr.isatty():
        what = "the reference trainer" if target in (None, "reference") else target
        print(f"torchdoctor: profiling {what} ({steps} steps)...", file=sys.stderr, flush=True)
    try:
        report = _profile_target(target, steps=steps, data=data, device=device, seed=seed,
                                 fmt=fmt, trace=trace, timeout=timeout,
                                 limit_batches=limit_batches, num_workers=num_workers,
                                 script_args=tuple(script_args))
    except UsageError as exc:
        print(f"torchdoctor profile: error: {exc}", file=sys.stderr)
        return 2
    write(report.table(fmt))
    return 0 if report.finished else 1


def _profile_target(target: str | None, *, steps: int, data: str | None, device: str,
                    seed: int, fmt: str, trace: str | None, timeout: float,
                    limit_batches: int, num_workers: int,
                    script_args: tuple[str, ...]) -> ProfileReport:
    check_format(fmt)
    if not timeout > 0:
        raise UsageError(f"timeout must be > 0 seconds, not {timeout!r}")
    with _quiet_kineto():
        if target in (None, "reference"):
            return profile_reference(steps=steps, data_root=data, device=device,
                                     num_workers=num_workers, trace=trace, seed=seed)
        from torchdoctor.engine.context import CheckOptions

        check_count("steps", steps, 1)
        check_count("limit_batches", limit_batches, 1)
        options = CheckOptions(device=device, seed=seed, limit_batches=limit_batches,
                               max_steps=steps, timeout=timeout, data_root=data,
                               script_args=script_args, skipped_steps=0,
                               trace_steps=0,  # op tracing would be profiled too
                               gpu_emulation="off")  # and an emulated GPU's bookkeeping
        return profile_script(target, options, trace=trace)


@contextmanager
def _quiet_kineto() -> Iterator[None]:
    """Silence kineto's start/stop lines and its "gpuGetDeviceCount failed" error on
    machines without a GPU (its log level is read when the profiler first starts); the
    variable is put back afterwards."""
    before = os.environ.get("KINETO_LOG_LEVEL")
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # 6: not even its USDT start/stop lines
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("KINETO_LOG_LEVEL", None)


__all__ = ["run_profile_cli"]
