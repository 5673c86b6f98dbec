"""Running a user's file as a program (as ``python file.py`` would) under
instrumentation, within a time limit, and returning what was observed."""

from __future__ import annotations

import builtins
import contextlib
import io
import multiprocessing
import signal
import sys
import threading
import time
import traceback
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchdoctor.engine.context import CheckOptions
from torchdoctor.errors import TargetError
from torchdoctor.scriptrun.budget import StopRun
from torchdoctor.scriptrun.bypass import CompileBypass
from torchdoctor.scriptrun.callsite import display_path, is_user_file, user_frame_of_traceback
from torchdoctor.scriptrun.datasets import OfflineDatasets
from torchdoctor.scriptrun.gpuemu import GpuEmulation, wants_emulation
from torchdoctor.scriptrun.instrument import Instrumentation
from torchdoctor.scriptrun.latehooks import define_late_hooks
from torchdoctor.scriptrun.observations import (
    CodeLocation,
    ErrorRecord,
    RunStatus,
    ScriptRun,
    WarningRecord,
)
from torchdoctor.scriptrun.overlay import ScratchOverlay

_OUTPUT_TAIL = 4000  # characters of the script's own output kept for --verbose


class RunTimeout(BaseException):
    """Raised inside the user's script when ``--timeout`` expires (a BaseException so
    ``except Exception`` in user code does not swallow it)."""


@dataclass
class ScriptResult:
    """A finished script run: the observations, the script's globals, the root models
    it called (``models``) and deep copies of them taken at their first forward
    (``snapshots``, before any training), and the tail of what it printed."""

    run: ScriptRun
    namespace: dict[str, Any]
    models: list[Any] = field(default_factory=list)
    snapshots: list[Any] = field(default_factory=list)
    output: str = ""


def compile_file(path: Path) -> types.CodeType:
    """Read and compile ``path``; a missing file or a syntax error is a TargetError."""
    if not path.is_file():
        raise TargetError(f"{path}: no such file. Give the path of a Python file, "
                          "e.g. torchdoctor check train.py")
    try:
        source = path.read_text(encoding="utf-8")
        return compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise TargetError(f"{display_path(str(path))}:{exc.lineno}: syntax error: {exc.msg}. "
                          "Fix the file so that `python FILE` runs.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"{path}: cannot be read: {exc}") from None


def run_script(path: Path, options: CheckOptions, *,
               argv: list[str] | None = None) -> ScriptResult:
    """Run ``path`` as ``__main__`` in the fast-dev-run regime (see
    :mod:`torchdoctor.scriptrun.instrument`) and return what was observed. Global state touched by
    the run is the caller's to preserve (the runner wraps this in preserved_state)."""
    path = Path(path).resolve()
    code = compile_file(path)
    source = path.read_text(encoding="utf-8")
    module = types.ModuleType("__main__")
    module.__file__ = str(path)
    module.__dict__["__builtins__"] = builtins
    run = ScriptRun(path=display_path(str(path)))
    output = io.StringIO()
    children_before = {p.pid for p in multiprocessing.active_children()}
    started = time.perf_counter()
    with _as_program(path, module, argv or []), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with OfflineDatasets(source, options.data_root, run), ScratchOverlay(run, path.parent), \
                CompileBypass(run), GpuEmulation(run, wants_emulation(options)), \
                Instrumentation(options, run) as instrumentation:
            _execute(code, module, run, instrumentation, options.timeout, output)
    run.seconds = time.perf_counter() - started
    _end_leftover_processes(children_before, run)
    run.warnings = _warning_records(caught)
    # hook defs the program did not reach (cut by a cap, --timeout, a crash, sys.exit)
    run.notes.extend(define_late_hooks(source, str(path), module.__dict__))
    _finish_phases(run)
    return ScriptResult(run, module.__dict__, list(instrumentation.models),
                        list(instrumentation.snapshots), output.getvalue()[-_OUTPUT_TAIL:])


def _execute(code: types.CodeType, module: types.ModuleType, run: ScriptRun,
             instrumentation: Instrumentation, timeout: float, output: io.StringIO) -> None:
    try:
        with _time_limit(timeout), contextlib.redirect_stdout(output), \
                contextlib.redirect_stderr(output):
            exec(code, module.__dict__)
    except StopRun as stop:
        run.status = RunStatus.STOPPED
        run.cut = stop.reason  # reported with the phases (the one it was cut in)
    except RunTimeout:
        run.status = RunStatus.TIMEOUT
        run.cut = f"--timeout ({timeout:g}s)"
        run.notes.append(f"the script was stopped at --timeout ({timeout:g}s)")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            run.status = RunStatus.EXITED
            run.notes.append(f"the script called sys.exit({exc.code!r})")
    except Exception as exc:  # the user's script crashed: that is an observation
        run.status = RunStatus.CRASHED
        run.error = _error_record(exc, instrumentation, not run.forwards)


def _error_record(exc: Exception, instrumentation: Instrumentation,
                  before_training: bool) -> ErrorRecord:
    frames = traceback.extract_tb(exc.__traceback__)
    user_frames = [f for f in frames if is_user_file(f.filename)]
    text = "".join(traceback.format_list(user_frames or frames[-3:]))
    text += "".join(traceback.format_exception_only(type(exc), exc))
    return ErrorRecord(
        type_name=type(exc).__name__,
        message=str(exc)[:2000],
        location=user_frame_of_traceback(exc.__traceback__),
        module_stack=instrumentation.error_stack_for(exc),
        traceback_text=text,
        before_training=before_training,
    )


@contextlib.contextmanager
def _as_program(path: Path, module: types.ModuleType, argv: list[str]) -> Iterator[None]:
    """sys.argv, sys.path[0] and sys.modules['__main__'] as ``python path`` sets them,
    restored afterwards."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    saved_main = sys.modules.get("__main__")
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.parent))
    sys.modules["__main__"] = module
    try:
        yield
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
        if saved_main is not None:
            sys.modules["__main__"] = saved_main


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise RunTimeout in this thread after ``seconds``. Uses SIGALRM in the main
    thread (it interrupts sleeps too); elsewhere a watchdog thread injects it."""
    if seconds <= 0:
        yield
        return
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        yield from _alarm_limit(seconds)
    else:
        yield from _watchdog_limit(seconds)


def _alarm_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise RunTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _watchdog_limit(seconds: float) -> Iterator[None]:
    import ctypes

    target = threading.get_ident()
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(seconds):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target),
                                                       ctypes.py_object(RunTimeout))

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _end_leftover_processes(before: set[int | None], run: ScriptRun) -> None:
    """Terminate worker processes the script started and left running (Hogwild workers
    still training when the run was stopped or timed out): otherwise multiprocessing
    waits for them when torchdoctor exits, and the command never returns."""
    leftover = [p for p in multiprocessing.active_children() if p.pid not in before]
    for process in leftover:
        process.terminate()
    for process in leftover:
        process.join(timeout=5)
    if leftover:
        run.notes.append(f"{len(leftover)} process(es) the script started were still "
                         "running when the run ended and were terminated")


def _warning_records(caught: list[warnings.WarningMessage]) -> list[WarningRecord]:
    records = []
    for item in caught:
        location = None
        if item.filename and is_user_file(item.filename):
            location = CodeLocation(display_path(item.filename), item.lineno or 0)
        records.append(WarningRecord(item.category.__name__, str(item.message), location))
    return records


def _finish_phases(run: ScriptRun) -> None:
    measured = sum(run.phase_seconds.get(k, 0.0) for k in ("data", "forward", "backward",
                                                            "step"))
    for phase in ("data", "forward", "backward", "step"):
        run.phase_seconds.setdefault(phase, 0.0)
    run.phase_seconds["other"] = max(run.seconds - measured, 0.0)
