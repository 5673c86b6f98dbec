"""What :func:`torchdoctor.watch` does with a finding: record it, warn, or raise.

Every finding is recorded (it appears in ``doc.report()``). The policy says what else
happens, per finding kind (the check id): ``"warn"`` issues a
:class:`TorchDoctorWarning`, ``"raise"`` raises the typed exception of that kind
(:class:`~torchdoctor.errors.NonFiniteError` for ``nan-loss``...). Without a rule for a
kind, error findings warn and the others are only recorded.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from types import FrameType

from torchdoctor.errors import (
    DiagnosisError,
    GradientError,
    ModeError,
    NonFiniteError,
    NumericsError,
    ShapeError,
    TorchDoctorWarning,
)
from torchdoctor.findings import Finding, Severity

#: monitor id -> the exception raised for it under the "raise" policy
KINDS: dict[str, type[DiagnosisError]] = {
    "nan-loss": NonFiniteError,
    "loss-trend": DiagnosisError,
    "gradient-norm": GradientError,
    "update-ratio": DiagnosisError,
    "no-gradient": GradientError,
    "not-in-optimizer": DiagnosisError,
    "missing-zero-grad": GradientError,
    "eval-mode": ModeError,
    "numerics": NumericsError,
    "shape-mismatch": ShapeError,
}
ACTIONS = ("record", "warn", "raise")
DEFAULT_KEY = "default"

PolicySpec = str | Mapping[str, str] | None


class Policy:
    """Per-kind actions. ``spec`` is one action for every kind (``"raise"``), or a
    mapping from monitor ids (and ``"default"``) to actions."""

    def __init__(self, spec: PolicySpec = None) -> None:
        rules = {DEFAULT_KEY: spec} if isinstance(spec, str) else dict(spec or {})
        unknown = sorted(set(rules) - set(KINDS) - {DEFAULT_KEY})
        if unknown:
            valid = ", ".join([*KINDS, DEFAULT_KEY])
            raise ValueError(f"unknown policy key(s) {', '.join(map(repr, unknown))}; "
                             f"valid keys: {valid}")
        for key, action in rules.items():
            if action not in ACTIONS:
                raise ValueError(f"policy {key!r}: unknown action {action!r}; "
                                 f"choose one of {', '.join(ACTIONS)}")
        self.rules: dict[str, str] = rules

    def action(self, finding: Finding) -> str:
        """The action for ``finding``: its kind's rule, else the ``default`` rule, else
        ``warn`` for errors and ``record`` for the rest."""
        rule = self.rules.get(finding.check) or self.rules.get(DEFAULT_KEY)
        if rule is not None:
            return rule
        return "warn" if finding.severity is Severity.ERROR else "record"

    def apply(self, finding: Finding) -> None:
        """Warn or raise as the policy says (recording is the caller's job)."""
        action = self.action(finding)
        if action == "warn":
            warnings.warn(TorchDoctorWarning(describe(finding)), stacklevel=_user_stacklevel())
        elif action == "raise":
            raise KINDS.get(finding.check, DiagnosisError)(describe(finding), [finding])


def describe(finding: Finding) -> str:
    """One line for a warning or an exception: ``[check] message (at ...). Fix: ...``."""
    where = f" (at {finding.location})" if finding.location else ""
    fix = f" Fix: {finding.hint}" if finding.hint else ""
    return f"[{finding.check}] {finding.message}{where}.{fix}"


_INTERNAL_DIRS = tuple(
    os.path.dirname(path) + os.sep
    for path in (__file__, getattr(sys.modules.get("torch"), "__file__", None) or __file__)
)


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the user's code (the first frame
    outside torchdoctor and torch), since monitors run inside torch's hooks."""
    frame: FrameType | None = sys._getframe(2)  # the caller of apply(): stacklevel 2
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 2


__all__ = ["ACTIONS", "KINDS", "Policy", "TorchDoctorWarning", "describe"]
