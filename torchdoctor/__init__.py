"""torchdoctor: finds out why a PyTorch model does not train, and says how to fix it.

Importing ``torchdoctor`` does not import torch; the names that need it are loaded on
first use (so ``torchdoctor --help`` and ``list-checks`` stay fast).
"""

from __future__ import annotations

import importlib
from typing import Any

from torchdoctor import _compat
from torchdoctor._version import __version__
from torchdoctor.check import Check, SkipCheck
from torchdoctor.errors import (
    BatchError,
    DeviceMismatchError,
    DiagnosisError,
    GradientError,
    LossInputError,
    ModeError,
    NonFiniteError,
    ShapeError,
    TargetError,
    TorchDoctorError,
    TorchDoctorWarning,
    UsageError,
)
from torchdoctor.findings import CheckResult, ExitCode, Finding, Outcome, Report, Severity
from torchdoctor.hookspecs import hookimpl

_compat.install()

# public name -> module that defines it; imported lazily because these need torch
_LAZY = {
    "watch": "torchdoctor.monitor.watch",
    "Watch": "torchdoctor.monitor.watch",
    "diagnose": "torchdoctor.engine.runner",
    "diagnose_model": "torchdoctor.engine.runner",
    "Diagnosis": "torchdoctor.engine.runner",
    "CheckOptions": "torchdoctor.engine.context",
}

__all__ = [
    "BatchError",
    "Check",
    "CheckOptions",
    "CheckResult",
    "DeviceMismatchError",
    "Diagnosis",
    "DiagnosisError",
    "ExitCode",
    "Finding",
    "GradientError",
    "LossInputError",
    "ModeError",
    "NonFiniteError",
    "Outcome",
    "Report",
    "Severity",
    "ShapeError",
    "SkipCheck",
    "TargetError",
    "TorchDoctorError",
    "TorchDoctorWarning",
    "UsageError",
    "Watch",
    "__version__",
    "diagnose",
    "diagnose_model",
    "hookimpl",
    "watch",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torchdoctor' has no attribute {name!r}")
