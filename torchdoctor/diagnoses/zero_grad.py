"""Missing or misdirected ``zero_grad``: the id, the words and the fix, for every front end.

Detection is :class:`~torchdoctor.diagnoses.gradcarry.GradCarryDetector`'s: it fills
:class:`~torchdoctor.scriptrun.observations.CarriedGradRecord` lists in the script
instrument, in :func:`torchdoctor.watch` and in
:func:`torchdoctor.testing.assert_no_grad_leak`. This module turns a record into the one
finding all of them report, so the bug reads the same wherever it is found.

A record tells the bugs apart: no ``zero_grad`` at all since the step, a ``zero_grad``
that cleared other parameters (another optimizer or another model: its
``zero_grad_locations``), or tensors updated by hand whose ``.grad`` is never cleared
(``manual``). No torch here: the check imports it while listing checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from torchdoctor.diagnoses.wording import name_list
from torchdoctor.findings import Finding, Severity

if TYPE_CHECKING:
    from torchdoctor.scriptrun.observations import CarriedGradRecord

#: the finding id, in every front end (``torchdoctor check``, ``watch()``, the helpers)
FINDING_ID = "missing-zero-grad"
#: the one-line summary of the bug (``torchdoctor list-checks``)
SUMMARY = "gradients carried over between optimizer steps (zero_grad missing or misdirected)"

_MISSING_HINT = ("Call `optimizer.zero_grad()` once per step, before `loss.backward()` (for "
                 "gradient accumulation: after `optimizer.step()`, every N micro-batches).")


def first_per_optimizer(records: Iterable[CarriedGradRecord]) -> list[CarriedGradRecord]:
    """The first carry of each optimizer: one finding per optimizer is enough."""
    first: dict[int, CarriedGradRecord] = {}
    for record in records:
        first.setdefault(record.optimizer, record)
    return list(first.values())


def carried_grad_finding(record: CarriedGradRecord) -> Finding:
    """The error for one carry: no zero_grad since the step, or one that cleared other
    parameters. Located at the ``step()`` line when known, else the first parameter."""
    explain = _manual if record.manual else \
        _misdirected if record.zero_grad_locations else _missing
    message, hint = explain(record)
    where = record.step_location or (record.params[0] if record.params else "")
    return Finding(FINDING_ID, Severity.ERROR, message, str(where), hint)


def _missing(record: CarriedGradRecord) -> tuple[str, str]:
    at = f" ({record.step_location})" if record.step_location else ""
    message = (f"optimizer.zero_grad() is never called between steps of {_optimizer(record)}: "
               f"gradients from step {record.step_index}{at} were added to step "
               f"{record.step_index + 1}'s ({name_list(record.params)})")
    return message, _MISSING_HINT


def _manual(record: CarriedGradRecord) -> tuple[str, str]:
    at = f" at {record.step_location}" if record.step_location else ""
    message = (f"the gradients of tensors updated by hand are never cleared: after update "
               f"{record.step_index}, backward(){at} added the new gradient to the old one "
               f"({name_list(record.params)})")
    first = record.params[0] if record.params else "w"
    hint = (f"After each update, clear the gradients: `{first}.grad.zero_()` (or "
            f"`{first}.grad = None`) for every updated tensor, or use a torch.optim optimizer "
            "with `optimizer.zero_grad()`.")
    return message, hint


def _misdirected(record: CarriedGradRecord) -> tuple[str, str]:
    at = f" at {record.step_location}" if record.step_location else ""
    calls = ", ".join(dict.fromkeys(str(loc) for loc in record.zero_grad_locations))
    count = len(record.params)
    message = (f"zero_grad() at {calls} clears other parameters (another optimizer or "
               f"another model), not the {count} parameter{'s' * (count != 1)} of "
               f"{_optimizer(record)}{at}: their gradients from step {record.step_index} "
               f"were added to step {record.step_index + 1}'s ({name_list(record.params)})")
    hint = (f"Call zero_grad() on the optimizer that steps these parameters "
            f"({_optimizer(record)}: `optimizer.zero_grad()`), or on the model that owns "
            "them (`model.zero_grad()`), once per step before `loss.backward()`.")
    return message, hint


def _optimizer(record: CarriedGradRecord) -> str:
    """``Adam #1`` style name (``#`` only for a second and later optimizer)."""
    suffix = f" #{record.optimizer + 1}" if record.optimizer else ""
    return f"{record.optimizer_type}{suffix}"
