"""check_loss_inputs: whether a prediction and a target suit a loss, raised as an error.

The judgement is :func:`torchdoctor.diagnoses.loss_inputs.loss_input_problems`'s (the
``loss-function`` check uses the same); this module turns live tensors into summaries
and the problems into :class:`~torchdoctor.errors.LossInputError` /
:class:`~torchdoctor.errors.ShapeError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchdoctor.diagnoses.loss_inputs import (
    canonical_loss_name,
    finding_id,
    loss_input_problems,
)
from torchdoctor.diagnoses.loss_rules import SHAPE_KINDS
from torchdoctor.errors import LossInputError, ShapeError
from torchdoctor.findings import Finding
from torchdoctor.tensors import summarize
from torchdoctor.validators.common import ERROR, conclude

__all__ = ["canonical_loss_name", "check_loss_inputs", "loss_input_problems", "loss_name_of"]

def loss_name_of(loss_fn: Any) -> str:
    """The canonical name of a loss module, functional loss or ``functools.partial``."""
    target = getattr(loss_fn, "func", loss_fn)  # functools.partial
    name = type(target).__name__ if isinstance(target, nn.Module) else \
        getattr(target, "__name__", type(target).__name__)
    return canonical_loss_name(name)


def _loss_options(loss_fn: Any) -> dict[str, str]:
    ignore_index = getattr(loss_fn, "ignore_index", None)
    if ignore_index is None:
        ignore_index = getattr(loss_fn, "keywords", {}).get("ignore_index")  # partial
    return {} if ignore_index is None else {"ignore_index": str(ignore_index)}


def check_loss_inputs(prediction: torch.Tensor, target: Any,
                      loss_fn: Callable[..., Any] | str) -> None:
    """Check that ``prediction`` and ``target`` suit ``loss_fn`` (a loss module, a
    ``torch.nn.functional`` loss or its name) before computing the loss.

    Finds softmax outputs fed to CrossEntropyLoss, raw logits fed to NLLLoss or BCELoss,
    sigmoid outputs fed to BCEWithLogitsLoss, wrong target dtypes and ranges, and shapes
    that broadcast silently ((B, 1) against (B,) in MSELoss). Shape problems raise
    :class:`~torchdoctor.errors.ShapeError`, the others
    :class:`~torchdoctor.errors.LossInputError`.
    """
    name = loss_fn if isinstance(loss_fn, str) else loss_name_of(loss_fn)
    target_summary = summarize(target) if isinstance(target, torch.Tensor) else None
    problems = loss_input_problems(name, summarize(prediction), target_summary,
                                   _loss_options(loss_fn))
    findings = [Finding(finding_id(name, p), p.severity, p.message, canonical_loss_name(name),
                        p.hint) for p in problems]
    shape_error = any(p.severity is ERROR and p.kind in SHAPE_KINDS for p in problems)
    conclude(findings, ShapeError if shape_error else LossInputError)
