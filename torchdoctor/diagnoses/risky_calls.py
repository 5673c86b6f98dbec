"""Calls that work today but bypass a safeguard: the id, the words and the fix.

* ``torch.load`` that may unpickle arbitrary objects (``weights_only=False``, written or
  torch's default before 2.6): a checkpoint from elsewhere can run code on load.
* ``model.forward(x)`` called directly: the module's hooks (forward hooks, pre-hooks,
  anything registered on it by a library) never run.

Both are latent, not wrong results: warnings. Detection is
:mod:`torchdoctor.scriptrun.directcalls`'s. No torch here: the check imports it while
listing checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchdoctor.findings import Finding, Severity

if TYPE_CHECKING:
    from torchdoctor.scriptrun.observations import DirectForwardRecord, LoadRecord

#: the check id of both findings
FINDING_ID = "risky-calls"
#: the one-line summary (``torchdoctor list-checks``)
SUMMARY = "torch.load without weights_only=True; model.forward(x) bypassing hooks"

_LOAD_HINT = ("Save and load a state_dict: `torch.save(model.state_dict(), path)`, then "
              "`model.load_state_dict(torch.load(path, weights_only=True))`.")


def unsafe_load_finding(record: LoadRecord) -> Finding:
    """The warning for one ``torch.load`` that may execute code from the file."""
    how = "with weights_only=False" if record.explicit else \
        "without weights_only=True (this torch's default unpickles anything)"
    message = (f"torch.load is called {how}: loading a checkpoint from elsewhere can "
               "execute arbitrary code")
    return Finding(FINDING_ID, Severity.WARNING, message, str(record.location or ""),
                   _LOAD_HINT)


def direct_forward_finding(record: DirectForwardRecord) -> Finding:
    """The warning for one direct ``.forward(...)`` call of the user's code."""
    message = (f"{record.module}.forward(...) is called directly: the module's hooks "
               "(forward hooks and pre-hooks, including those libraries register) are "
               "bypassed")
    hint = "Call the module itself: `model(x)` instead of `model.forward(x)`."
    return Finding(FINDING_ID, Severity.WARNING, message, str(record.location), hint)
