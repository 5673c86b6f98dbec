"""A loss kept with its autograd graph across steps (``total_loss += loss``,
``losses.append(loss)``): one home for its id, words and fix.

A warning, never an error: the results are right, only memory grows with each step (and
a long run ends out of memory). Seen by :mod:`torchdoctor.scriptrun.keptgraph`. No torch
at module level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchdoctor.findings import Finding, Severity

if TYPE_CHECKING:
    from torchdoctor.scriptrun.observations import KeptGraphRecord

FINDING_ID = "graph-kept-alive"
SUMMARY = ("losses kept with their autograd graph across steps (`total_loss += loss`, "
           "`losses.append(loss)`): memory grows every step")
HINT = ("keep a number, not the tensor: `total_loss += loss.item()` (or `loss.detach()`), "
        "`losses.append(loss.item())`")


def finding(record: KeptGraphRecord) -> Finding:
    """The warning for one backward line whose earlier losses stay alive."""
    held = f"`{record.variable}` holds" if record.variable else "something still holds"
    where = f" (backward at {record.backward_location})" if record.backward_location else ""
    return Finding(
        FINDING_ID, Severity.WARNING,
        f"{held} the losses of finished steps with their autograd graphs{where}: every "
        "step's graph stays in memory, which grows with each step",
        str(record.keeper_location or record.backward_location or ""), HINT)
