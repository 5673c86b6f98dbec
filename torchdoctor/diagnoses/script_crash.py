"""The exception that ended the user's script when no check explained it: the run's
``target`` finding (its one home).

Script mode caps DataLoader passes (:mod:`torchdoctor.scriptrun.budget`), so code after
a capped pass sees less data than the program was written for: a per-class accuracy
``100 * correct[c] / total[c]`` divides by zero when the short test pass never met class
``c`` (pytorch/tutorials cifar10_tutorial), a dict of per-class counts misses a key, a
``next(iter(...))`` runs dry. Such a crash is most likely ours, not the user's bug: after
a capped pass it is a warning that names the caps and how to confirm, never an error.
Any other exception, or one of these in a run whose passes were not capped, stays an
error. No torch import here.
"""

from __future__ import annotations

from torchdoctor.findings import TARGET_CHECK_ID, Finding, Severity
from torchdoctor.scriptrun.observations import ErrorRecord, ScriptRun
from torchdoctor.scriptrun.phases import summarize

#: exceptions that code sized for a full pass raises on the short data of a capped one
#: (counts that stay zero, classes or keys never seen, iterators that run dry)
CAP_SENSITIVE = ("ZeroDivisionError", "KeyError", "IndexError", "StopIteration")

UNEXPLAINED_FIX = ("no check recognised this error; run the file with python to see the "
                   "full traceback (or torchdoctor check --verbose)")


def _raised(error: ErrorRecord) -> str:
    first = error.message.strip().splitlines()[0] if error.message.strip() else ""
    return f"the script raised {error.type_name}" + (f": {first}" if first else "")


def capped_phases(run: ScriptRun) -> list[str]:
    """The phases with a DataLoader pass that the budget cut short (in program order);
    a capped pass no phase claims is named ``a DataLoader pass``."""
    names = [phase.name for phase in summarize(run) if phase.capped]
    if not names and any(p.capped for p in run.passes):
        names = ["a DataLoader pass"]
    return names


def caps_may_have_caused(run: ScriptRun) -> bool:
    """Whether the script's exception is one torchdoctor's batch caps can cause and some
    DataLoader pass before it was capped."""
    error = run.error
    return (error is not None and error.type_name in CAP_SENSITIVE
            and not _raised_by_torch(error) and any(p.capped for p in run.passes))


def _raised_by_torch(error: ErrorRecord) -> bool:
    """An IndexError torch raised ("index 10 is out of bounds for dimension 0", "Dimension
    out of range") is about tensor shapes, not about how many batches a pass had."""
    message = error.message.lower()
    return "dimension" in message or "out of bounds" in message


def crash_finding(run: ScriptRun) -> Finding:
    """The finding for the exception that ended ``run`` (``run.error`` must be set):
    a warning when the batch caps probably caused it, an error otherwise."""
    error = run.error
    assert error is not None, "crash_finding needs a run that crashed"
    where = str(error.location or run.path)
    if not caps_may_have_caused(run):
        return Finding(TARGET_CHECK_ID, Severity.ERROR, _raised(error), where,
                       UNEXPLAINED_FIX)
    phases = ", ".join(capped_phases(run))
    return Finding(
        TARGET_CHECK_ID, Severity.WARNING,
        f"{_raised(error)} after torchdoctor capped DataLoader passes ({phases}): the caps "
        "probably caused it (a count that stayed zero, a class or key a short pass never "
        "met); the checks saw only what ran before",
        where,
        "to confirm, run the script itself with python, or give it whole passes with "
        f"`torchdoctor check {run.path} --limit-batches N` (N at least the batches of one "
        "pass); if it still raises, the error is in the script")


__all__ = ["CAP_SENSITIVE", "capped_phases", "caps_may_have_caused", "crash_finding"]
