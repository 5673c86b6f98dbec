"""``risky-calls``: calls that work but bypass a safeguard (warnings).

Reads two lists the script instrument fills: ``torch.load`` calls that may unpickle
arbitrary objects (:attr:`~torchdoctor.scriptrun.observations.ScriptRun.unsafe_loads`)
and ``model.forward(x)`` calls of the user's code
(:attr:`~torchdoctor.scriptrun.observations.ScriptRun.direct_forwards`). The words and
fixes are :mod:`torchdoctor.diagnoses.risky_calls`'s. Script mode only: only running the
script shows its calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchdoctor.check import Check
from torchdoctor.diagnoses import risky_calls

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext
    from torchdoctor.findings import Finding
    from torchdoctor.scriptrun.observations import ScriptRun


class RiskyCallsCheck(Check):
    """Finds unsafe ``torch.load`` calls and direct ``model.forward(x)`` calls."""

    id = risky_calls.FINDING_ID
    summary = risky_calls.SUMMARY

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """One warning per call site (a load in a loop is reported once)."""
        findings = [risky_calls.unsafe_load_finding(r) for r in run.unsafe_loads]
        findings += [risky_calls.direct_forward_finding(r) for r in run.direct_forwards]
        return list(dict.fromkeys(findings))
