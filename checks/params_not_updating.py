"""``params-not-updating``: the script's own training leaves parameters unchanged.

Reads what the script run recorded: its backward passes, optimizer steps, the optimizers
seen (at their ``zero_grad()`` or ``step()``) and the parameters that carried a gradient
at a step but that no optimizer holds. Two bugs: backward passes with no optimizer step
ever called (``optimizer.step`` written without parentheses, or forgotten), and
parameters in no optimizer (it was built before a layer was replaced). A warning for
optimizer parameters that never receive a gradient (a layer not used in forward, a
detached path; modules used only in eval are left out). Loops without an
optimizer (updates by hand), frozen parameters (``requires_grad=False``: no gradient),
gradient accumulation and an optimizer that steps every k iterations are not flagged.
The words and fixes are :mod:`torchdoctor.diagnoses.parameters`'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchdoctor.check import Check
from torchdoctor.diagnoses import parameters

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext
    from torchdoctor.findings import Finding
    from torchdoctor.scriptrun.observations import ScriptRun


class ParamsNotUpdatingCheck(Check):
    """Finds parameters the script's optimizer never updates."""

    id = parameters.PARAMS_NOT_UPDATING_ID
    summary = parameters.PARAMS_NOT_UPDATING_SUMMARY

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """An error for a loop that never steps, and one for gradients in no optimizer;
        a warning per optimizer for its parameters that never receive a gradient."""
        found = (parameters.no_step_finding(run), parameters.unoptimized_grads_finding(run))
        gradless = [parameters.gradless_finding(record) for record in run.gradless]
        return [finding for finding in found if finding is not None] + gradless
