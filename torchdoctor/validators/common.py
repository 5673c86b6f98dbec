"""What the validators share: check ids, raising or warning with findings, and the
formatting of shapes and dtypes in messages."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from torchdoctor.errors import DiagnosisError
from torchdoctor.findings import Finding, Severity

DEVICE_CHECK = "device-mismatch"
SHAPE_CHECK = "shape-mismatch"
LOSS_CHECK = "loss-function"
BATCH_CHECK = "batch"

ERROR, WARNING = Severity.ERROR, Severity.WARNING

#: the fix when a view()/reshape mixed samples up (wrong batch size downstream)
SPLIT_SAMPLES_HINT = ("a view()/reshape merged or split samples: flatten with x.flatten(1) "
                      "or x.view(x.size(0), -1), never x.view(-1, N) with a guessed N")
#: the fix for class labels 1..C where 0..C-1 is expected
LABELS_FROM_ONE_HINT = "the labels start at 1: subtract 1 (targets - 1)"


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


def format_shape(shape: Sequence[int]) -> str:
    """``(64, 1, 28, 28)``: a shape as a tuple of ints."""
    return str(tuple(int(s) for s in shape))


def dtype_name(dtype: torch.dtype | str) -> str:
    """``float32`` for ``torch.float32``."""
    return str(dtype).replace("torch.", "")


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
