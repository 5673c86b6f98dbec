"""The phases of a program seen in a script run, and the rules that name them (their one
home): train, validate, test, predict, checkpoint.

Each call of a root model is labelled after the run, from what the run recorded:

* **train**: a backward pass followed it, or it ran in a DataLoader pass in which backward
  passes ran (a GAN's generator forward, a teacher's forward inside a training pass);
* **validate**: an evaluation (no backward) with training still to come: between
  training passes, or before the first one (a sanity check); also the DataLoader pass
  right after the last training call when its loader validated between training passes
  (the last epoch's validation);
* **test**: an evaluation after the last training call, in a DataLoader pass, or a
  series of calls outside any DataLoader (an evaluation loop over tensors);
* **predict**: after the last training call, outside any DataLoader, a lone call (at most
  :data:`PREDICT_CALLS` in a row) or one on a single sample (batch dimension 1);
* **checkpoint**: ``torch.save``, ``torch.load`` and ``load_state_dict`` calls of the
  user's own code (see :mod:`torchdoctor.scriptrun.instrument`).

A phase whose DataLoader passes yielded fewer batches than the loader had is marked
``capped`` (the budget of :mod:`torchdoctor.scriptrun.budget`); the phase the program was
in when it was cut (a safety cap, ``--timeout``, a crash) carries the reason in ``cut``.
No torch import here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from torchdoctor.scriptrun.observations import (
    CodeLocation,
    ForwardRecord,
    RunStatus,
    ScriptRun,
)

PHASES = ("train", "validate", "test", "predict", "checkpoint")
PREDICT_CALLS = 2  #: calls in a row outside any DataLoader that still read as predictions


@dataclass
class PhaseRecord:
    """A phase seen in the run (see the rules above)."""

    name: str  #: train, validate, test, predict or checkpoint
    passes: int = 0  #: DataLoader passes
    batches: int = 0
    forwards: int = 0  #: calls of a root model (checkpoint: calls of save/load)
    location: CodeLocation | None = None  #: where it first happened
    capped: bool = False  #: some of its passes were capped by the budget
    cut: str = ""  #: why the program was cut short in this phase
    detail: str = ""  #: checkpoint: which calls (``save x1, load_state_dict x1``)


def label_forwards(run: ScriptRun) -> list[str]:
    """The phase of each forward in ``run.forwards`` (same order)."""
    training_passes = {p.index for p in run.passes if p.backwards}
    trains = [f.backward_followed or f.loader_pass in training_passes for f in run.forwards]
    last_train = max((i for i, t in enumerate(trains) if t), default=-1)
    last_validation = _last_epoch_validation(run, trains, last_train)
    labels = []
    for position, forward in enumerate(run.forwards):
        if trains[position]:
            labels.append("train")
        elif position < last_train or 0 <= last_validation == forward.loader_pass:
            labels.append("validate")
        elif forward.loader_pass >= 0:
            labels.append("test")
        else:
            labels.append("predict" if _predicts(run.forwards, position) else "test")
    return labels


def _last_epoch_validation(run: ScriptRun, trains: list[bool], last_train: int) -> int:
    """The DataLoader pass right after the last training call when it goes over a loader
    that validated between training passes (the last epoch's validation, not a test),
    else -1."""
    after = [f.loader_pass for f in run.forwards[last_train + 1:] if f.loader_pass >= 0]
    if not after or last_train < 0:
        return -1
    validated = {run.passes[f.loader_pass].loader
                 for f, t in zip(run.forwards[:last_train], trains)
                 if not t and 0 <= f.loader_pass < len(run.passes)}
    first = after[0]
    return first if first < len(run.passes) and run.passes[first].loader in validated else -1


def _predicts(forwards: list[ForwardRecord], position: int) -> bool:
    """A call outside any DataLoader after training: a prediction when it is on one
    sample, or one of at most PREDICT_CALLS such calls in a row."""
    forward = forwards[position]
    if forward.inputs and forward.inputs[0].shape[:1] == (1,):
        return True
    start = end = position
    while start > 0 and forwards[start - 1].loader_pass < 0 \
            and not forwards[start - 1].backward_followed:
        start -= 1
    while end + 1 < len(forwards) and forwards[end + 1].loader_pass < 0:
        end += 1
    return end - start + 1 <= PREDICT_CALLS


def summarize(run: ScriptRun) -> list[PhaseRecord]:
    """The phases seen, in the order they first appeared (checkpoints placed by the
    forwards that ran before them); the phase the run ended in says why it was cut."""
    labels = label_forwards(run)
    phases: dict[str, PhaseRecord] = {}
    first: dict[str, float] = {}
    seen_passes: dict[str, set[int]] = {}
    for position, (forward, label) in enumerate(zip(run.forwards, labels)):
        record = phases.setdefault(label, PhaseRecord(label, location=forward.location))
        first.setdefault(label, position)
        record.forwards += 1
        if forward.loader_pass >= 0:
            seen_passes.setdefault(label, set()).add(forward.loader_pass)
    for label, indices in seen_passes.items():
        passes = [run.passes[i] for i in sorted(indices) if i < len(run.passes)]
        phases[label].passes = len(passes)
        phases[label].batches = sum(p.batches for p in passes)
        phases[label].capped = any(p.capped for p in passes)
    if run.checkpoints:
        kinds = Counter(c.kind for c in run.checkpoints)
        phases["checkpoint"] = PhaseRecord(
            "checkpoint", forwards=len(run.checkpoints), location=run.checkpoints[0].location,
            detail=", ".join(f"{kind} x{n}" for kind, n in kinds.items()))
        first["checkpoint"] = run.checkpoints[0].after_forwards - 0.5
    ordered = sorted(phases.values(), key=lambda r: first[r.name])
    reason = end_reason(run)
    if reason and ordered:
        last = labels[-1] if labels else ordered[-1].name
        if run.checkpoints and run.checkpoints[-1].after_forwards >= len(run.forwards):
            last = "checkpoint"
        phases[last].cut = reason
    return ordered


def end_reason(run: ScriptRun) -> str:
    """Why the program did not run to its end ("" when it did)."""
    if run.status is RunStatus.STOPPED:
        return run.cut
    if run.status is RunStatus.TIMEOUT:
        return run.cut or "--timeout"
    if run.status is RunStatus.CRASHED and run.error is not None:
        return f"the script raised {run.error.type_name}"
    return ""


def phase_dicts(run: ScriptRun | None) -> list[dict[str, Any]]:
    """The phases as JSON objects (the report's ``phases`` field)."""
    if run is None:
        return []
    found = []
    for record in summarize(run):
        item: dict[str, Any] = {"phase": record.name, "calls": record.forwards,
                                "passes": record.passes, "batches": record.batches,
                                "location": str(record.location) if record.location else None,
                                "capped": record.capped, "cut": record.cut or None}
        if record.detail:
            item["detail"] = record.detail
        found.append(item)
    return found


__all__ = ["PHASES", "PhaseRecord", "end_reason", "label_forwards", "phase_dicts", "summarize"]
