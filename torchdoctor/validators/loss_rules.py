"""The per-loss rules of :func:`~torchdoctor.validators.loss_input_problems`: what each
loss expects of its prediction and target (logits or probabilities, index or float
targets, their ranges and shapes), judged from tensor summaries only."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torchdoctor.findings import Severity
from torchdoctor.scriptrun.observations import TensorSummary
from torchdoctor.validators.common import (
    ERROR,
    LABELS_FROM_ONE_HINT,
    WARNING,
    dtype_name,
    format_shape,
)

_REGRESSION = ("MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss")
#: problem kinds that are about shapes: check_loss_inputs raises ShapeError for them
SHAPE_KINDS = frozenset({"broadcast", "target-shape", "single-unit"})


class LossInputProblem(tuple[str, str, str]):
    """One problem: unpacks as ``(severity, message, hint)``; ``kind`` says which rule
    found it (``probabilities``, ``log-probabilities``, ``sigmoid-output``,
    ``not-log-probabilities``, ``not-probabilities``, ``target-dtype``, ``target-range``,
    ``target-shape``, ``broadcast``, ``single-unit``, ``prediction-dtype``, ``nonfinite``).
    """

    kind: str

    def __new__(cls, kind: str, severity: str, message: str, hint: str) -> LossInputProblem:
        problem = super().__new__(cls, (severity, message, hint))
        problem.kind = kind
        return problem

    @property
    def severity(self) -> Severity:
        """``Severity.ERROR`` or ``Severity.WARNING``."""
        return Severity(self[0])

    @property
    def message(self) -> str:
        """One sentence saying what is wrong."""
        return self[1]

    @property
    def hint(self) -> str:
        """The fix."""
        return self[2]


_P = LossInputProblem


def common_problems(pred: TensorSummary, target: TensorSummary | None) -> list[_P]:
    """Problems of any loss: a non-float prediction, NaN/inf in prediction or target."""
    if not pred.is_floating:
        return [_P("prediction-dtype", ERROR, f"the prediction is {dtype_name(pred.dtype)}: a "
                   "loss needs the model's float output",
                   "pass the raw model output, not argmax()/round() of it")]
    found = []
    if not pred.finite:
        found.append(_P("nonfinite", ERROR, "the prediction holds NaN/inf before the loss",
                        "find where: torchdoctor.hooks.localize_nonfinite(model, inputs)"))
    if target is not None and target.is_floating and not target.finite:
        found.append(_P("nonfinite", ERROR, "the target holds NaN/inf", "clean the labels"))
    return found


def _classes(pred: TensorSummary) -> int | None:
    return pred.shape[1] if len(pred.shape) >= 2 else None


def _cross_entropy(pred: TensorSummary, target: TensorSummary | None,
                   ignore_index: int) -> list[_P]:
    found = _class_dim_problems(pred, "CrossEntropyLoss")
    if pred.rows_sum_to_one:
        found.append(_P("probabilities", ERROR, "the prediction passed to CrossEntropyLoss "
                        "looks like probabilities (rows sum to 1): softmax was applied, and "
                        "CrossEntropyLoss applies log_softmax itself, so gradients shrink "
                        "and learning stalls", "remove the softmax: return the raw logits"))
    elif pred.log_probabilities:
        found.append(_P("log-probabilities", WARNING, "the prediction passed to "
                        "CrossEntropyLoss is already log_softmax output: CrossEntropyLoss "
                        "applies log_softmax again (harmless but redundant)",
                        "use NLLLoss on log-probabilities, or return raw logits"))
    return found + _index_target_problems(pred, target, "CrossEntropyLoss", ignore_index,
                                          soft_ok=True)


def _nll(pred: TensorSummary, target: TensorSummary | None, ignore_index: int) -> list[_P]:
    found = _class_dim_problems(pred, "NLLLoss")
    if pred.rows_sum_to_one:
        found.append(_P("probabilities", ERROR, "NLLLoss got probabilities (rows sum to 1), "
                        "not log-probabilities", "use log_softmax instead of softmax, or "
                        "CrossEntropyLoss on the raw logits"))
    elif _classes(pred) and pred.min is not None and not pred.log_probabilities:
        # (a shape-only summary, min None, says nothing about the values)
        found.append(_P("not-log-probabilities", ERROR, f"NLLLoss got raw logits (values in "
                        f"[{pred.min:.3g}, {pred.max:.3g}]), not log-probabilities",
                        "add nn.LogSoftmax(dim=1) as the last layer, or use "
                        "CrossEntropyLoss on the logits"))
    return found + _index_target_problems(pred, target, "NLLLoss", ignore_index,
                                          soft_ok=False)


def _class_dim_problems(pred: TensorSummary, loss: str) -> list[_P]:
    if len(pred.shape) >= 2 and pred.shape[1] == 1:
        return [_P("single-unit", ERROR, f"{loss} over a single output unit "
                   f"{format_shape(pred.shape)}: the softmax of one logit is always 1, so the loss "
                   "is always 0 and nothing learns", "give the last layer one output per "
                   "class (out_features=num_classes); for a binary task use "
                   "BCEWithLogitsLoss")]
    return []


def _index_target_problems(pred: TensorSummary, target: TensorSummary | None, loss: str,
                           ignore_index: int, *, soft_ok: bool) -> list[_P]:
    if target is None:
        return []
    if target.is_floating:
        if soft_ok and target.shape == pred.shape:
            return _probability_target_problems(target, loss)
        return [_P("target-dtype", ERROR, f"the targets are {dtype_name(target.dtype)} "
                   f"{format_shape(target.shape)}: {loss} needs int64 class indices",
                   "targets = targets.long()")]
    found = []
    if target.dtype not in ("torch.int64", "torch.uint8"):
        found.append(_P("target-dtype", ERROR, f"the targets are {dtype_name(target.dtype)}: "
                        f"{loss} needs int64 class indices", "targets = targets.long()"))
    return (found + _index_shape_problems(pred, target, loss)
            + _index_range_problems(pred, target, loss, ignore_index))


def _probability_target_problems(target: TensorSummary, loss: str) -> list[_P]:
    if (target.min or 0) < 0 or (target.max or 0) > 1:
        return [_P("target-range", ERROR, f"probability targets for {loss} range "
                   f"[{target.min:.3g}, {target.max:.3g}]: they must lie in [0, 1]",
                   "pass class indices (int64) or class probabilities")]
    return []


def _index_shape_problems(pred: TensorSummary, target: TensorSummary, loss: str) -> list[_P]:
    wanted = pred.shape[:1] + pred.shape[2:] if len(pred.shape) >= 2 else ()
    if target.shape == wanted or len(pred.shape) < 2:
        return []
    if target.shape == (*wanted, 1):
        return [_P("target-shape", ERROR, f"class-index targets of shape "
                   f"{format_shape(target.shape)}: {loss} wants shape {format_shape(wanted)}",
                   "targets = targets.squeeze(1)")]
    return [_P("target-shape", ERROR, f"prediction {format_shape(pred.shape)} and class-index "
               f"targets {format_shape(target.shape)} do not match in shape: {loss} wants targets "
               f"of shape {format_shape(wanted)}", "flatten with x.flatten(1), never "
               "x.view(-1, N), and keep one label per sample")]


def _index_range_problems(pred: TensorSummary, target: TensorSummary, loss: str,
                          ignore_index: int) -> list[_P]:
    classes, low, high = _classes(pred), target.min, target.max
    if classes is None or low is None or high is None:
        return []
    if (low >= 0 or low == ignore_index) and high < classes:
        return []
    hint = (LABELS_FROM_ONE_HINT if low == 1 and high == classes
            else f"give the last layer {int(high) + 1} outputs, or remap the labels to "
            f"0..{classes - 1}")
    return [_P("target-range", ERROR, f"class indices range {low:g}..{high:g} but the "
               f"prediction has {classes} classes: {loss} needs indices in [0, {classes})",
               hint)]


def _binary_target_problems(pred: TensorSummary, target: TensorSummary | None,
                            loss: str) -> list[_P]:
    if target is None:
        return []
    found = []
    if not target.is_floating:
        found.append(_P("target-dtype", ERROR, f"the targets are {dtype_name(target.dtype)}: "
                        f"{loss} needs float targets", "targets = targets.float()"))
    if (target.min is not None and target.min < 0) or (target.max or 0) > 1:
        found.append(_P("target-range", ERROR, f"the targets range [{target.min:.3g}, "
                        f"{target.max:.3g}]: {loss} targets are probabilities in [0, 1]",
                        "for more than two classes use CrossEntropyLoss with class indices"))
    if target.shape != pred.shape:
        found.append(_P("target-shape", ERROR, f"prediction {format_shape(pred.shape)} and target "
                        f"{format_shape(target.shape)} differ in shape: {loss} needs equal shapes",
                        _same_shape_hint(pred.shape, target.shape)))
    return found


def _bce_with_logits(pred: TensorSummary, target: TensorSummary | None,
                     ignore_index: int) -> list[_P]:
    low, high = pred.min, pred.max
    found = []
    if low is not None and high is not None and 0 <= low < high <= 1:
        found.append(_P("sigmoid-output", ERROR, f"every prediction lies in [0, 1] "
                        f"([{low:.3g}, {high:.3g}]): a sigmoid was applied before "
                        "BCEWithLogitsLoss, which applies the sigmoid itself",
                        "remove the final sigmoid and return logits (or use BCELoss on "
                        "probabilities)"))
    return found + _binary_target_problems(pred, target, "BCEWithLogitsLoss")


def _bce(pred: TensorSummary, target: TensorSummary | None, ignore_index: int) -> list[_P]:
    found = []
    if (pred.min is not None and pred.min < 0) or (pred.max or 0) > 1:
        found.append(_P("not-probabilities", ERROR, f"BCELoss needs probabilities in [0, 1] "
                        f"but the predictions range [{pred.min:.3g}, {pred.max:.3g}]: raw "
                        "logits?", "use BCEWithLogitsLoss on the logits (numerically stable)"))
    return found + _binary_target_problems(pred, target, "BCELoss")


def _regression(pred: TensorSummary, target: TensorSummary | None,
                ignore_index: int) -> list[_P]:
    if target is None:
        return []
    if not target.is_floating:
        classes = _classes(pred)
        if classes and classes > 1 and len(target.shape) == 1:
            return [_P("target-dtype", ERROR, f"integer class labels {format_shape(target.shape)} "
                       f"against {classes} outputs in a regression loss",
                       "use CrossEntropyLoss for classification")]
        return [_P("target-dtype", ERROR, f"the targets are {dtype_name(target.dtype)}: a "
                   "regression loss needs float targets", "targets = targets.float()")]
    return _broadcast_problems(pred.shape, target.shape)


def _broadcast_problems(pred: tuple[int, ...], target: tuple[int, ...]) -> list[_P]:
    if pred == target:
        return []
    joint = broadcast_shape(pred, target)
    if joint is None:
        return [_P("target-shape", ERROR, f"prediction {format_shape(pred)} and target "
                   f"{format_shape(target)} shapes do not match",
                   _same_shape_hint(pred, target))]
    return [_P("broadcast", ERROR, f"prediction {format_shape(pred)} and target "
               f"{format_shape(target)} broadcast to {format_shape(joint)}: every prediction "
               "is compared with every target and the model only learns the mean",
               _same_shape_hint(pred, target))]


def _same_shape_hint(pred: tuple[int, ...], target: tuple[int, ...]) -> str:
    if pred == (*target, 1):
        return "targets = targets.unsqueeze(1) (or prediction.squeeze(1))"
    if target == (*pred, 1):
        return "targets = targets.squeeze(1)"
    return "make them the same shape: targets.view_as(prediction)"


def broadcast_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    """The broadcast shape of ``a`` and ``b``, or None if they do not broadcast."""
    joint = []
    for x, y in zip(reversed((1,) * (len(b) - len(a)) + tuple(a)),
                    reversed((1,) * (len(a) - len(b)) + tuple(b))):
        if x != y and 1 not in (x, y):
            return None
        joint.append(max(x, y) if 0 not in (x, y) else 0)
    return tuple(reversed(joint))


def _kl_div(pred: TensorSummary, target: TensorSummary | None, ignore_index: int) -> list[_P]:
    if pred.rows_sum_to_one:
        return [_P("probabilities", ERROR, "KLDivLoss got probabilities; its input must be "
                   "log-probabilities", "pass torch.log_softmax(logits, dim=1)")]
    return []


_Rule = Callable[[TensorSummary, TensorSummary | None, int], list[LossInputProblem]]
#: canonical loss name -> its rule: (prediction, target, ignore_index) -> problems
RULES: dict[str, _Rule] = {
    "CrossEntropyLoss": _cross_entropy, "NLLLoss": _nll,
    "BCEWithLogitsLoss": _bce_with_logits, "BCELoss": _bce, "KLDivLoss": _kl_div,
    **dict.fromkeys(_REGRESSION, _regression),
}
