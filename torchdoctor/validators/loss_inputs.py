"""check_loss_inputs and loss_input_problems: whether a prediction and a target suit a
loss, and the canonical names of the losses (``F.cross_entropy`` -> ``CrossEntropyLoss``).

:func:`loss_input_problems` works from :class:`TensorSummary` objects only, so the checks
run it on a script's observations; the rules per loss are in
:mod:`torchdoctor.validators.loss_rules`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchdoctor.errors import LossInputError, ShapeError
from torchdoctor.findings import Finding
from torchdoctor.scriptrun.observations import TensorSummary
from torchdoctor.tensors import summarize
from torchdoctor.validators.common import ERROR, LOSS_CHECK, conclude
from torchdoctor.validators.loss_rules import (
    RULES,
    SHAPE_KINDS,
    LossInputProblem,
    common_problems,
)

_LOSS_NAMES = {
    "crossentropyloss": "CrossEntropyLoss", "cross_entropy": "CrossEntropyLoss",
    "nllloss": "NLLLoss", "nll_loss": "NLLLoss",
    "bcewithlogitsloss": "BCEWithLogitsLoss",
    "binary_cross_entropy_with_logits": "BCEWithLogitsLoss",
    "bceloss": "BCELoss", "binary_cross_entropy": "BCELoss",
    "mseloss": "MSELoss", "mse_loss": "MSELoss", "l1loss": "L1Loss", "l1_loss": "L1Loss",
    "smoothl1loss": "SmoothL1Loss", "smooth_l1_loss": "SmoothL1Loss",
    "huberloss": "HuberLoss", "huber_loss": "HuberLoss",
    "kldivloss": "KLDivLoss", "kl_div": "KLDivLoss",
}


def canonical_loss_name(name: str) -> str:
    """``CrossEntropyLoss`` for ``F.cross_entropy``, ``torch.nn.CrossEntropyLoss``..."""
    short = name.rsplit(".", 1)[-1]
    return _LOSS_NAMES.get(short.lower(), short)


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
    findings = [Finding(LOSS_CHECK, p.severity, p.message, canonical_loss_name(name), p.hint)
                for p in problems]
    shape_error = any(p.severity is ERROR and p.kind in SHAPE_KINDS for p in problems)
    conclude(findings, ShapeError if shape_error else LossInputError)


def loss_input_problems(loss_name: str, prediction: TensorSummary,
                        target: TensorSummary | None,
                        options: dict[str, str] | None = None) -> list[LossInputProblem]:
    """What is wrong with feeding ``prediction`` and ``target`` to the loss
    ``loss_name`` (``CrossEntropyLoss``, ``cross_entropy``, ``torch.nn.MSELoss``...),
    from summaries only. Each problem unpacks as ``(severity, message, hint)``
    (severity ``"error"`` or ``"warning"``) and has a ``kind``. ``options`` are the
    loss's settings as strings; ``ignore_index`` (default -100) is honoured. Empty when
    all is well or the loss is unknown."""
    name = canonical_loss_name(loss_name)
    problems = common_problems(prediction, target)
    if problems or name not in RULES:
        return problems
    ignore_index = int((options or {}).get("ignore_index", -100))
    return RULES[name](prediction, target, ignore_index)
