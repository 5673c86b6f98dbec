"""The base class of every check, built-in or third-party.

A check is mostly its verdict. Subclass :class:`Check`, set ``id`` and ``summary``, and
implement what applies:

* :meth:`Check.check_script` reads what a script run observed (script mode);
* :meth:`Check.check_model` examines one model candidate, usually by training a copy
  (model mode), and is called once per candidate;
* :meth:`Check.explain_crash` recognises the exception that ended the user's script.

The template :meth:`Check.run` dispatches by mode, so no check guards against a missing
run or missing models; ``modes`` is derived from which methods a subclass implements.
The runner restores RNG and global torch state around each check and turns an exception
into a ``crashed`` outcome, so a check need not defend against its own bugs. A check
never prints.

Modules defining checks must not import torch at module level: ``torchdoctor
list-checks`` imports them and must stay fast. Import torch inside the methods.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any, ClassVar

from torchdoctor.findings import Finding, Severity
from torchdoctor.hookspecs import hookimpl

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext, ModelCandidate
    from torchdoctor.scriptrun.observations import ErrorRecord, ScriptRun


class SkipCheck(Exception):
    """Raised by a check that cannot say anything about this target; the message is
    the reason shown with the ``skipped`` outcome. Raised from :meth:`Check.check_model`
    it skips that candidate only; the check is skipped when it examined nothing."""


class Check:
    """Base class of a torchdoctor check. Subclass, set ``id`` and ``summary``, implement
    :meth:`check_script` and/or :meth:`check_model`, and return the class from a
    ``torchdoctor_checks`` hook."""

    #: stable id used by --select/--ignore, in JSON and as pytest item name
    id: ClassVar[str] = ""
    #: one line for ``torchdoctor list-checks``
    summary: ClassVar[str] = ""
    #: what the check reads: "script" (observations of a run), "model" (copies of the
    #: model). Derived from the methods a subclass implements unless set explicitly.
    modes: ClassVar[frozenset[str]] = frozenset({"script", "model"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "modes" in cls.__dict__ or not _implements_any(cls):
            return
        cls.modes = frozenset(mode for mode, methods in _MODE_METHODS.items()
                              if any(_overrides(cls, m) for m in methods))

    def run(self, ctx: CheckContext) -> list[Finding]:
        """Examine the target and return findings (an empty list: all is well).

        The template: the crash explanation that belongs to this check, then
        :meth:`check_script` on the run, then :meth:`check_model` on each candidate
        (when :meth:`wants_models` agrees). Override only for an unusual flow."""
        failure = getattr(self, "_explain_failure", None)
        if failure is not None:
            raise RuntimeError(f"{self.id}.explain_crash raised:\n{failure}")
        findings = [f for f in ctx.crash_explanations if f.check == self.id]
        if "script" in self.modes and ctx.run is not None:
            findings += self.check_script(ctx, ctx.run)
        if "model" in self.modes and "model" in ctx.modes and \
                self.wants_models(ctx, findings):
            findings += self._each_model(ctx)
        return list(dict.fromkeys(findings))  # two instances of one model say it once

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """Findings from what the script run observed."""
        return []

    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        """Findings about one model candidate (train ``ctx.fresh_model(candidate)``
        copies: the user's model is never touched). Raise :class:`SkipCheck` when this
        candidate cannot be examined."""
        return []

    def wants_models(self, ctx: CheckContext, script_findings: list[Finding]) -> bool:
        """Whether model mode should run after script mode found ``script_findings``
        (e.g. no need to train copies when the script already showed the bug)."""
        return True

    def explain_crash(self, error: ErrorRecord, run: ScriptRun) -> Finding | None:
        """A finding that explains the exception which ended the user's script, when
        this check recognises its cause; build it with ``explains_crash=True``."""
        return None

    @hookimpl
    def torchdoctor_explain_crash(self, error: ErrorRecord, run: ScriptRun) -> Finding | None:
        """The pluggy face of :meth:`explain_crash` (the runner registers each check).

        In pluggy one raising implementation would end the hook call for every check,
        so a failure is kept and re-raised when this check runs: it shows as this
        check's ``crashed`` outcome, the others still answer."""
        try:
            return self.explain_crash(error, run)
        except Exception:  # any check's, ours or a plugin's: re-raised in run(), crashed
            self._explain_failure = traceback.format_exc()
            return None

    def _each_model(self, ctx: CheckContext) -> list[Finding]:
        findings: list[Finding] = []
        skipped: list[str] = []
        for candidate in ctx.models:
            try:
                findings += self.check_model(ctx, candidate)
            except SkipCheck as exc:
                skipped.append(f"{candidate.name}: {exc}" if len(ctx.models) > 1 else str(exc))
        script_examined = "script" in self.modes and ctx.run is not None
        if skipped and len(skipped) == len(ctx.models) and not script_examined:
            raise SkipCheck("; ".join(skipped))  # examined nothing: never "passed"
        return findings

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


#: mode -> the methods that serve it
_MODE_METHODS = {"script": ("check_script", "explain_crash"), "model": ("check_model",)}


def _overrides(cls: type[Check], method: str) -> bool:
    return getattr(cls, method) is not getattr(Check, method)


def _implements_any(cls: type[Check]) -> bool:
    """Whether ``cls`` uses the template (implements a mode method), as opposed to a
    check that overrides :meth:`Check.run` itself."""
    return any(_overrides(cls, m) for methods in _MODE_METHODS.values() for m in methods)
