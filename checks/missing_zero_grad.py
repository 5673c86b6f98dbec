"""``missing-zero-grad``: gradients of one optimizer step are added to the next one's.

Reads the :class:`~torchdoctor.scriptrun.observations.CarriedGradRecord` list that the
script instrument's :class:`~torchdoctor.diagnoses.gradcarry.GradCarryDetector` filled:
a parameter whose ``.grad`` was still non-zero when the first backward pass after an
optimizer step reached it. Gradient accumulation (several backward passes, then
``step()`` and ``zero_grad()``) is never recorded, and neither is ``model.zero_grad()``
or ``p.grad = None`` on the same parameters: they leave nothing behind. The words and
the fix are :mod:`torchdoctor.diagnoses.zero_grad`'s, shared with ``watch()`` and
``assert_no_grad_leak``. There is nothing to see without running the loop, so the check
needs script mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchdoctor.check import Check
from torchdoctor.diagnoses import zero_grad

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext
    from torchdoctor.findings import Finding
    from torchdoctor.scriptrun.observations import ScriptRun


class MissingZeroGradCheck(Check):
    """Finds gradients carried over from one optimizer step into the next."""

    id = zero_grad.FINDING_ID
    summary = zero_grad.SUMMARY

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """One error per optimizer whose gradients were carried over (its first carry)."""
        return [zero_grad.carried_grad_finding(record)
                for record in zero_grad.first_per_optimizer(run.carried_grads)]
