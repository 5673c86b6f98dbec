"""``learning-rate``: the script's own optimizer moves the weights by a negligible or a
huge amount per step.

Reads the update sizes the script run measured at each optimizer's first steps
(:attr:`~torchdoctor.scriptrun.observations.ScriptRun.update_sizes`:
``||Δw|| / ||w||`` per param group). The thresholds, words and fixes are
:mod:`torchdoctor.diagnoses.learning_rate`'s. Script mode only. overfit-one-batch trains
copies with the script's own setup and confirms a learning rate that cannot fit one
batch; where this check's finding is an error, overfit-one-batch leaves that cause to it.
Where the run diverged into NaN/inf, huge updates are left to nan-loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchdoctor.check import Check, SkipCheck
from torchdoctor.diagnoses import learning_rate

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext
    from torchdoctor.findings import Finding
    from torchdoctor.scriptrun.observations import ScriptRun


class LearningRateCheck(Check):
    """Finds learning rates too small or too large for the weights they update."""

    id = learning_rate.FINDING_ID
    summary = learning_rate.SUMMARY

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """One finding per param group whose updates are negligible or huge."""
        if not run.update_sizes:
            raise SkipCheck("no optimizer step was applied: no update to measure")
        # a run whose updates diverged into NaN/inf is nan-loss's finding, with the
        # learning rate as its cause and fix: one finding per cause
        return learning_rate.findings(run.update_sizes, huge=not _diverged(run))


def _diverged(run: ScriptRun) -> bool:
    """Whether the run went NaN/inf in a way nan-loss puts down to the learning rate."""
    if not run.nonfinite:
        return False
    from torchdoctor.diagnoses.nonfinite import Evidence, diverges

    record = run.nonfinite[0]
    applied = run.applied_steps
    optimizer_type = applied[-1].optimizer_type if applied else ""
    return diverges(Evidence(record.step_count, record.kind,
                             loss_history=tuple(record.loss_history), lr=record.lr,
                             optimizer_type=optimizer_type))
