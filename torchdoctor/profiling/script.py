"""Profile a user's training file in torchdoctor's fast-dev-run regime: :func:`profile_script`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from torchdoctor.errors import TargetError
from torchdoctor.profiling.advice import advise
from torchdoctor.profiling.base import DEFAULT_TOP, PHASES, UNFINISHED, check_device
from torchdoctor.profiling.recording import Recording
from torchdoctor.profiling.report import LoaderInfo, ProfileReport

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckOptions
    from torchdoctor.scriptrun.observations import ScriptRun

_WHAT_PROFILE_TAKES = "profile takes a Python training script or 'reference'"


def profile_script(path: str | os.PathLike[str], options: CheckOptions, *,
                   trace: str | None = None, top: int = DEFAULT_TOP) -> ProfileReport:
    """Run a user's training file under torch.profiler in torchdoctor's fast-dev-run
    regime (DataLoader passes capped at ``options.limit_batches``, optimizer steps at
    ``options.max_steps``, the run at ``options.timeout`` seconds).

    The phase split comes from the instrument's timings, the operators and memory from
    the profiler. Raises :class:`TargetError` when ``path`` is not a Python file.
    """
    from torchdoctor.engine.state import preserved_state
    from torchdoctor.scriptrun.script import run_script

    script = _script_path(path)
    check_device(options.device)
    recording = Recording(options.device, trace, top)
    with preserved_state(options.seed), recording:
        result = run_script(script, options, argv=list(options.script_args))
    run = result.run
    report = ProfileReport(
        target=str(path), device=options.device, steps=_script_steps(run),
        phase_seconds=_script_phases(run), top_ops=recording.top_ops, memory=recording.memory,
        trace_path=recording.trace_path, loader=LoaderInfo(batch_size=_batch_size(run)),
        device_seconds=recording.device_seconds, kind="script", status=str(run.status.value),
        notes=_run_notes(run, options))
    report.advice = advise(report)
    return report


def _script_path(path: str | os.PathLike[str]) -> Path:
    script = Path(path)
    if not script.is_file():
        raise TargetError(f"{path}: no such file; {_WHAT_PROFILE_TAKES}")
    if script.suffix != ".py":
        raise TargetError(f"{path}: not a .py file; {_WHAT_PROFILE_TAKES}")
    return script


def _script_phases(run: ScriptRun) -> dict[str, float]:
    """The instrument's phase seconds; "other" is whatever the four phases leave of the
    run, so the shares always add up to 1."""
    phases = {p: float(run.phase_seconds.get(p, 0.0)) for p in PHASES[:-1]}
    measured = sum(phases.values())
    phases["other"] = max(float(run.phase_seconds.get("other", 0.0)), run.seconds - measured)
    return phases


def _script_steps(run: ScriptRun) -> int:
    """Training iterations: every optimizer.step call, also those skipped past the
    budget (their batch was still fetched, run forward and backward)."""
    return len(run.steps) or len(run.backwards) or run.batches


def _batch_size(run: ScriptRun) -> int | None:
    for forward in run.forwards:
        if forward.training and forward.inputs and forward.inputs[0].shape:
            return forward.inputs[0].shape[0]
    return None


def _run_notes(run: ScriptRun, options: CheckOptions) -> list[str]:
    """The run's own notes, plus how it ended early when it did. The step budget's note
    is said in profile's own terms (its ``--steps``)."""
    from torchdoctor.scriptrun.budget import STEP_BUDGET_NOTE  # torch is loaded by now

    notes = list(run.notes)
    if run.cut.startswith(STEP_BUDGET_NOTE) and options.skipped_steps == 0:
        notes.append(f"stopped after {options.max_steps} optimizer step(s) (--steps)")
    elif run.cut and run.status.value == "stopped":  # a timeout is said below
        notes.append(f"the run was cut before the program's end: {run.cut}")
    status = run.status.value
    if status not in UNFINISHED:
        return notes
    cause = ""
    if run.error is not None:
        where = f" at {run.error.location}" if run.error.location else ""
        cause = f": {run.error.type_name}: {run.error.message}{where}"
    notes.append(f"the script ended early ({status}){cause}; the profile covers what ran "
                 "before")
    return notes


__all__ = ["profile_script"]
