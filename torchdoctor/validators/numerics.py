"""check_loss_expression: the op tracer's rules on one loss (or metric) computation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torchdoctor.errors import NumericsError, ShapeError
from torchdoctor.validators.common import SHAPE_CHECK, conclude


def check_loss_expression(loss_fn: Callable[..., Any], prediction: torch.Tensor,
                          target: Any) -> None:
    """Call ``loss_fn(prediction, target)`` under the op tracer. Raises
    :class:`~torchdoctor.errors.ShapeError` when prediction and target broadcast into
    each other, :class:`~torchdoctor.errors.NumericsError` when an unsafe expression
    already produced inf/NaN (or a 0 inside a log); warns about latent unsafe
    expressions (``log(softmax(x))``, a hand-written BCE...). Returns None when all is
    well. Only the code of ``loss_fn`` that you wrote is looked at."""
    from torchdoctor.hooks.optrace import problem_findings, trace_loss

    findings = problem_findings(trace_loss(loss_fn, prediction, target))
    shape = any(f.check == SHAPE_CHECK and f.severity.value == "error" for f in findings)
    conclude(findings, ShapeError if shape else NumericsError)
