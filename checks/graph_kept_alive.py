"""``graph-kept-alive``: the script keeps its losses with their autograd graphs across
steps (``total_loss += loss`` without ``.item()``), so memory grows every step.

Reads :attr:`~torchdoctor.scriptrun.observations.ScriptRun.kept_graphs`, filled by
:mod:`torchdoctor.scriptrun.keptgraph` (markers in the autograd nodes of each loss that
outlive their step). The words and fix are :mod:`torchdoctor.diagnoses.kept_graph`'s.
Script mode only; warnings only (the results are right).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchdoctor.check import Check, SkipCheck
from torchdoctor.diagnoses import kept_graph

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext
    from torchdoctor.findings import Finding
    from torchdoctor.scriptrun.observations import ScriptRun


class GraphKeptAliveCheck(Check):
    """Finds losses whose graphs outlive their steps."""

    id = kept_graph.FINDING_ID
    summary = kept_graph.SUMMARY

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """One warning per backward line whose earlier losses stay alive."""
        if not run.backwards:
            raise SkipCheck("no backward pass ran: no graph to follow")
        return [kept_graph.finding(record) for record in run.kept_graphs]
