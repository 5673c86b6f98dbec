"""Loss inputs that do not suit the loss: which loss a name means, what is wrong with
one call's prediction and target (the rules are :mod:`torchdoctor.diagnoses.loss_rules`'s),
and which of torch's exceptions are such a problem.

The one home of this bug class: the ``loss-function`` check (script mode, model mode
and the crash it explains) and :func:`torchdoctor.validators.check_loss_inputs` call
these functions. No torch import.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from torchdoctor.diagnoses.loss_rules import (
    ERROR,
    RULES,
    SHAPE_KINDS,
    LossInputProblem,
    common_problems,
)
from torchdoctor.diagnoses.shapes import SHAPE_CHECK

if TYPE_CHECKING:
    from torchdoctor.scriptrun.observations import ErrorRecord, TensorSummary

#: the finding id of loss-input bugs
LOSS_CHECK = "loss-function"

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

#: the losses the ``loss-function`` check judges (canonical names); the problems of
#: regression losses (broadcasting) are shape-mismatch's
CLASSIFICATION_LOSSES = ("CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "BCELoss",
                         "KLDivLoss")

#: a problem found from the value range alone: at init, raw logits of a one-output model
#: often all lie in (0, 1) too, so it needs the model's last operation to confirm it
NEEDS_STRUCTURE = "sigmoid-output"


def canonical_loss_name(name: str) -> str:
    """``CrossEntropyLoss`` for ``F.cross_entropy``, ``torch.nn.CrossEntropyLoss``..."""
    short = name.rsplit(".", 1)[-1]
    return _LOSS_NAMES.get(short.lower(), short)


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


def finding_id(loss: str, problem: LossInputProblem) -> str:
    """The id a problem is reported under, whichever front end finds it: a
    classification loss's problems are ``loss-function``'s; the shape problems of the
    other losses (a silent broadcast in MSELoss) are ``shape-mismatch``'s, as the checks
    divide them."""
    if canonical_loss_name(loss) not in CLASSIFICATION_LOSSES and problem.kind in SHAPE_KINDS:
        return SHAPE_CHECK
    return LOSS_CHECK


def classification_problems(loss: str, prediction: TensorSummary,
                            target: TensorSummary | None,
                            options: dict[str, str] | None = None) -> list[LossInputProblem]:
    """The problems of one call of a classification loss (what the ``loss-function``
    check reports). Non-finite predictions are nan-loss's to explain and other losses
    shape-mismatch's, so both give []."""
    if canonical_loss_name(loss) not in CLASSIFICATION_LOSSES or not prediction.finite:
        return []
    return loss_input_problems(loss, prediction, target, options)


_RANGE_HINT = ("make the last layer output one score per class, and labels 0..C-1 "
               "(1-based labels: subtract 1)")
#: exception messages raised by torch for unsuitable loss inputs -> kind, message, fix
_CRASHES: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (re.compile(r"expected (?:target dtype to be Long|scalar type Long but found)"),
     "target-dtype", "the classification loss got targets of the wrong dtype",
     "class-index targets must be int64: `labels.long()` (for probabilities use float "
     "targets of the prediction's shape)"),
    (re.compile(r"Target -?\d+ is out of bounds|t >= 0 && t < n_classes"),
     "target-range", "a target label is outside the range of classes", _RANGE_HINT),
    (re.compile(r"0D or 1D target tensor expected, multi-target not supported"),
     "target-shape", "the classification loss got 2-D targets (one-hot or (N, 1))",
     "pass class indices of shape (N,): `labels.squeeze(1)`, or `labels.argmax(dim=1)` for "
     "one-hot labels"),
    (re.compile(r"Expected floating point type for target with class probabilities"),
     "target-dtype", "the classification loss got integer targets of the prediction's shape "
     "(one-hot)", "pass class indices `labels.argmax(dim=1)`, or `labels.float()` as "
     "probabilities"),
    (re.compile(r"all elements of input should be between 0 and 1"),
     "not-probabilities", "BCELoss got values outside [0, 1] (logits)",
     "use BCEWithLogitsLoss on the raw logits"),
)
_BCE_DTYPE = re.compile(r"result type Float can't be cast to the desired output type|"
                        r"Found dtype (?:Long|Int) but expected Float")


def crash_problem(error: ErrorRecord) -> LossInputProblem | None:
    """The loss-input problem behind the exception that ended a script, or None."""
    for pattern, kind, message, hint in _CRASHES:
        if pattern.search(error.message):
            return LossInputProblem(kind, ERROR, message, hint)
    if _BCE_DTYPE.search(error.message) and "binary_cross_entropy" in error.traceback_text:
        return LossInputProblem("target-dtype", ERROR, "the binary cross-entropy loss "
                                "got integer targets", "convert them: `targets.float()`")
    return None
