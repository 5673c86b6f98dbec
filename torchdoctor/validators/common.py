"""What the validators share: check ids, raising or warning with findings, and the
formatting of shapes and dtypes in messages."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch

from torchdoctor.diagnoses.devices import DEVICE_CHECK as DEVICE_CHECK
from torchdoctor.diagnoses.loss_inputs import LOSS_CHECK as LOSS_CHECK
from torchdoctor.diagnoses.loss_rules import LABELS_FROM_ONE_HINT as LABELS_FROM_ONE_HINT
from torchdoctor.diagnoses.shapes import SHAPE_CHECK as SHAPE_CHECK
from torchdoctor.diagnoses.shapes import SPLIT_SAMPLES_HINT as SPLIT_SAMPLES_HINT
from torchdoctor.diagnoses.wording import dtype_name as dtype_name
from torchdoctor.diagnoses.wording import format_shape as format_shape
from torchdoctor.errors import DiagnosisError
from torchdoctor.findings import Finding, Severity

BATCH_CHECK = "batch"

ERROR, WARNING = Severity.ERROR, Severity.WARNING



def conclude(findings: list[Finding], error: type[DiagnosisError]) -> None:
    """Raise ``error`` carrying all findings if one is an error; warn about the rest.

    Called directly by the public validators: the warning's ``stacklevel`` points at
    the user's call of the validator."""
    if any(f.severity is ERROR for f in findings):
        raise error("\n".join(finding_line(f) for f in findings), findings)
    for finding in findings:
        warnings.warn(finding_line(finding), UserWarning, stacklevel=3)


def finding_line(finding: Finding) -> str:
    """``message. Fix: hint`` (one line of an error message or warning)."""
    fix = f" Fix: {finding.hint}" if finding.hint else ""
    return f"{finding.message}.{fix}"


def labelled_tensors(value: Any, label: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a nested value with their positions: ``tensors[1]['image']``."""
    if isinstance(value, torch.Tensor):
        yield label, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from labelled_tensors(item, f"{label}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from labelled_tensors(item, f"{label}[{key!r}]")
