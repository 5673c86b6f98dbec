"""``missing-zero-grad``: gradients of one optimizer step are added to the next one's.

Reads the :class:`~torchdoctor.observations.CarriedGradRecord` list that the script
instrument's :class:`~torchdoctor.gradcarry.GradCarryDetector` filled: a parameter
whose ``.grad`` was still non-zero when the first backward pass after an optimizer
step reached it. Gradient accumulation (several backward passes, then ``step()`` and
``zero_grad()``) is never recorded, and neither is ``model.zero_grad()`` or
``p.grad = None`` on the same parameters: they leave nothing behind.

The record's ``zero_grad_locations`` tell the two bugs apart: no ``zero_grad`` at all
since the step, or a ``zero_grad`` that cleared other parameters (another optimizer
or another model). There is nothing to see without running the loop, so the check
needs script mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchdoctor.check import Check
from torchdoctor.diagnoses.wording import name_list
from torchdoctor.findings import Finding

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext
    from torchdoctor.scriptrun.observations import CarriedGradRecord, ScriptRun


class MissingZeroGradCheck(Check):
    """Finds gradients carried over from one optimizer step into the next."""

    id = "missing-zero-grad"
    summary = "gradients carried over between optimizer steps (zero_grad missing or misdirected)"

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """One error per optimizer whose gradients were carried over (its first carry)."""
        first: dict[int, CarriedGradRecord] = {}
        for record in run.carried_grads:
            first.setdefault(record.optimizer, record)
        return [self._finding(record) for record in first.values()]

    def _finding(self, record: CarriedGradRecord) -> Finding:
        """No zero_grad since the step, or one that cleared other parameters."""
        explain = _manual if record.manual else \
            _misdirected if record.zero_grad_locations else _missing
        message, hint = explain(record)
        where = record.step_location or (record.params[0] if record.params else "")
        return self.error(message, location=where, hint=hint)


def _missing(record: CarriedGradRecord) -> tuple[str, str]:
    at = f" ({record.step_location})" if record.step_location else ""
    message = (f"optimizer.zero_grad() is never called between steps of {_optimizer(record)}: "
               f"gradients from step {record.step_index}{at} were added to step "
               f"{record.step_index + 1}'s ({name_list(record.params)})")
    hint = ("Call `optimizer.zero_grad()` once per step, before `loss.backward()` (for "
            "gradient accumulation: after `optimizer.step()`, every N micro-batches).")
    return message, hint


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
