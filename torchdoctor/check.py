"""The base class of every check, built-in or third-party.

A check is a small subclass: a stable ``id``, a one-line ``summary``, and ``run``,
which reads a :class:`~torchdoctor.context.CheckContext` and returns findings. It never
prints. It may train copies of the user's model (``ctx.fresh_model``); the runner
restores RNG and global torch state around it and turns an exception into a
``crashed`` outcome, so a check need not defend against its own bugs.

Modules defining checks must not import torch at module level: ``torchdoctor
list-checks`` imports them and must stay fast. Import torch inside ``run``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torchdoctor.findings import Finding, Severity

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext


class SkipCheck(Exception):
    """Raised by a check that cannot say anything about this target; the message is
    the reason shown with the ``skipped`` outcome."""


class Check:
    """Base class of a torchdoctor check. Subclass, set ``id`` and ``summary``,
    implement :meth:`run`, and return the class from a ``torchdoctor_checks`` hook."""

    #: stable id used by --select/--ignore, in JSON and as pytest item name
    id: ClassVar[str] = ""
    #: one line for ``torchdoctor list-checks``
    summary: ClassVar[str] = ""
    #: what the check reads: "script" (observations of a run), "model" (copies of
    #: the model trained by the reference trainer). It is skipped when none is there.
    modes: ClassVar[frozenset[str]] = frozenset({"script", "model"})

    def run(self, ctx: CheckContext) -> list[Finding]:
        """Examine the target and return findings (an empty list: all is well)."""
        raise NotImplementedError

    # Small constructors so findings always carry this check's id.
    def error(self, message: str, *, location: object = "", hint: str = "",
              explains_crash: bool = False) -> Finding:
        """An error finding (makes the command exit 1)."""
        return Finding(self.id, Severity.ERROR, message, str(location or ""), hint,
                       explains_crash)

    def warning(self, message: str, *, location: object = "", hint: str = "") -> Finding:
        """A warning finding (reported, exit code unchanged)."""
        return Finding(self.id, Severity.WARNING, message, str(location or ""), hint)

    def info(self, message: str, *, location: object = "", hint: str = "") -> Finding:
        """An informational finding."""
        return Finding(self.id, Severity.INFO, message, str(location or ""), hint)
