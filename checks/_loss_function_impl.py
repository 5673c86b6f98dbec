"""Helpers of the loss-function check (also used by overfit-one-batch).

* :func:`loss_problems`: what is wrong with one call of a classification loss (the rules
  are :func:`torchdoctor.validators.loss_input_problems`'s);
* :func:`crash_problem`: whether the exception that ended a script is a loss-input error;
* :func:`final_activation`: the module (or source line) that produced a model's output,
  when it is an activation such as Softmax, Sigmoid or ReLU.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchdoctor.findings import Severity

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

    from torchdoctor.scriptrun.observations import CodeLocation, ErrorRecord, TensorSummary

#: the losses this check judges (validators' canonical names); regression losses are
#: left to shape-mismatch, whose domain their problems (broadcasting) are
CLASSIFICATION_LOSSES = ("CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "BCELoss",
                         "KLDivLoss")

#: activations whose outputs cannot be negative (or are probabilities)
NON_NEGATIVE = ("ReLU", "ReLU6", "Softmax", "Sigmoid", "Softplus", "Hardsigmoid")
_FUNCTIONAL_ACTIVATION = re.compile(
    r"(?:\bF\.|functional\.|torch\.|\.)(softmax|log_softmax|sigmoid|relu|relu6|softplus)\(")
_RANGE_HINT = ("make the last layer output one score per class, and labels 0..C-1 "
               "(1-based labels: subtract 1)")


#: a problem found from the value range alone: at init, raw logits of a one-output model
#: often all lie in (0, 1) too, so it needs the model's last operation to confirm it
NEEDS_STRUCTURE = "sigmoid-output"


@dataclass(frozen=True)
class LossProblem:
    """One thing wrong with a loss call's inputs; ``kind`` (the validator's rule) groups
    the same problem seen in many calls."""

    kind: str
    severity: Severity
    message: str
    hint: str


def loss_problems(loss: str, prediction: TensorSummary, target: TensorSummary | None,
                  options: dict[str, str] | None = None) -> list[LossProblem]:
    """The problems of one call of a classification loss, judged by
    :func:`torchdoctor.validators.loss_input_problems`. Non-finite predictions are
    nan-loss's to explain and other losses shape-mismatch's, so both give []."""
    from torchdoctor.validators import canonical_loss_name, loss_input_problems

    if canonical_loss_name(loss) not in CLASSIFICATION_LOSSES or not prediction.finite:
        return []
    return [LossProblem(p.kind, p.severity, p.message, p.hint)
            for p in loss_input_problems(loss, prediction, target, options)]


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


def crash_problem(error: ErrorRecord) -> LossProblem | None:
    """The loss-input problem behind the exception that ended a script, or None."""
    for pattern, kind, message, hint in _CRASHES:
        if pattern.search(error.message):
            return LossProblem(kind, Severity.ERROR, message, hint)
    if _BCE_DTYPE.search(error.message) and "binary_cross_entropy" in error.traceback_text:
        return LossProblem("target-dtype", Severity.ERROR, "the binary cross-entropy loss "
                           "got integer targets", "convert them: `targets.float()`")
    return None


@dataclass(frozen=True)
class FinalActivation:
    """What produced the model's output: an activation module or a source line."""

    name: str  #: "Softmax", "relu", ...
    location: str


def final_activation(model: nn.Module, inputs: Any, label: str) -> FinalActivation | None:
    """The activation that produced ``model``'s output on ``inputs``: the last leaf
    module to run when it is one of :data:`NON_NEGATIVE` (or LogSoftmax), else a
    functional call on the ``return`` line of the model's forward. None otherwise."""
    from torchdoctor.hooks import module_info

    last = _last_leaf(model, inputs)
    if last is not None and last[1].__class__.__name__ in (*NON_NEGATIVE, "LogSoftmax"):
        qualname, module = last
        return FinalActivation(type(module).__name__,
                               f"{label}: {module_info(qualname, module).describe()}")
    return _functional_on_return(model)


def _last_leaf(model: nn.Module, inputs: Any) -> tuple[str, nn.Module] | None:
    import torch

    from torchdoctor.reference.trainer import forward

    order: list[tuple[str, nn.Module]] = []
    handles = [m.register_forward_hook(lambda mod, a, o, n=name: order.append((n, mod)))
               for name, m in model.named_modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return order[-1] if order else None


def _functional_on_return(model: nn.Module) -> FinalActivation | None:
    found = forward_source_line(model, lambda code: code.lstrip().startswith("return"),
                                last=True)
    if found is None:
        return None
    location, code = found
    match = _FUNCTIONAL_ACTIVATION.search(code)
    return FinalActivation(match.group(1), str(location)) if match else None


def forward_source_line(module: nn.Module, wanted: Callable[[str], bool], *,
                        last: bool = False) -> tuple[CodeLocation, str] | None:
    """The first (or last) line of ``type(module).forward`` whose code (comments
    stripped) satisfies ``wanted``, with that code; None without source."""
    from torchdoctor.scriptrun.callsite import display_path
    from torchdoctor.scriptrun.observations import CodeLocation

    forward = type(module).forward
    try:
        lines, start = inspect.getsourcelines(forward)
        path = display_path(inspect.getsourcefile(forward) or "")
    except (OSError, TypeError):
        return None
    hits = [(offset, code) for offset, code in
            ((i, line.split("#", 1)[0]) for i, line in enumerate(lines)) if wanted(code)]
    if not hits:
        return None
    offset, code = hits[-1] if last else hits[0]
    return CodeLocation(path, start + offset, forward.__name__), code
