"""Prediction and target that broadcast against each other in an elementwise loss:
the silent shape bug (``(64, 1)`` against ``(64,)`` in MSELoss compares every
prediction with every target, and torch only warns).

The one home of the detection (:func:`broadcast_shape`, :func:`silent_broadcast`,
torch's warning read by :func:`target_size_shapes`), the words and the fix
(:func:`broadcast_message`), used by the ``shape-mismatch`` check and by
:func:`torchdoctor.validators.check_loss_inputs`; and the op tracer's rule for
hand-written loss and metric code (:func:`broadcast_problem`: ``((pred - y) ** 2).mean()``
or ``(pred.round() == y)`` with ``(64, 1)`` against ``(64,)``), reported under the same
check id. No torch import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torchdoctor.diagnoses.wording import format_shape

if TYPE_CHECKING:
    from torchdoctor.scriptrun.observations import OpNode, OpProblem

#: the finding id of shape bugs (re-exported by :mod:`torchdoctor.diagnoses.shapes`)
SHAPE_CHECK = "shape-mismatch"
Explanation = tuple[str, str]
Shape = tuple[int, ...]

_INTS = r"([\d, ]*)"
#: torch's UserWarning of the elementwise losses, and BCE's errors, about differing shapes
TARGET_SIZE = re.compile(r"arget size \(torch\.Size\(\[" + _INTS + r"\]\)\) (?:that is "
                         r"different to the|must be the same as) input size "
                         r"\(torch\.Size\(\[" + _INTS + r"\]\)\)")


def ints(text: str) -> Shape:
    """The integers in ``text`` (``"64, 1"`` -> ``(64, 1)``)."""
    return tuple(int(p) for p in re.findall(r"-?\d+", text))


def target_size_shapes(text: str) -> tuple[Shape, Shape] | None:
    """``(prediction, target)`` shapes from torch's "Using a target size (...) that is
    different to the input size (...)" warning (or BCE's error), else None."""
    found = TARGET_SIZE.search(text)
    return (ints(found.group(2)), ints(found.group(1))) if found else None


def broadcast_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    """The broadcast shape of ``a`` and ``b``, or None if they do not broadcast."""
    joint = []
    for x, y in zip(reversed((1,) * (len(b) - len(a)) + tuple(a)),
                    reversed((1,) * (len(a) - len(b)) + tuple(b))):
        if x != y and 1 not in (x, y):
            return None
        joint.append(max(x, y) if 0 not in (x, y) else 0)
    return tuple(reversed(joint))


def silent_broadcast(prediction: Sequence[int], target: Sequence[int]) -> bool:
    """Prediction and target differ in shape but broadcast, so an elementwise loss
    compares the wrong pairs instead of failing."""
    return tuple(prediction) != tuple(target) and broadcast_shape(prediction, target) is not None


def broadcast_message(loss: str, prediction: Sequence[int],
                      target: Sequence[int]) -> Explanation:
    """``(message, fix)`` for a prediction/target pair that broadcasts in ``loss``
    (the loss's name, or "the loss")."""
    pred, targ = tuple(prediction), tuple(target)
    both = broadcast_shape(pred, targ) or ()
    message = (f"{loss} compares prediction {format_shape(pred)} with target "
               f"{format_shape(targ)}: they broadcast to {format_shape(both)}")
    if math.prod(both) > max(math.prod(pred), math.prod(targ)):
        message += ", so every prediction is compared with every target"
    message += "; the loss is wrong and the model cannot learn"
    return message, same_shape_fix(pred, targ)


def same_shape_fix(prediction: Shape, target: Shape) -> str:
    """How to give prediction and target the same shape."""
    if prediction[:-1] == target and prediction[-1:] == (1,):
        return "loss_fn(output.squeeze(1), targets) (or targets.unsqueeze(1))"
    if target[:-1] == prediction and target[-1:] == (1,):
        return "loss_fn(output, targets.squeeze(1)) (or output.unsqueeze(1))"
    if math.prod(prediction) == math.prod(target):
        return "loss_fn(output, targets.view_as(output))"
    return (f"make output and targets the same shape ({format_shape(prediction)} vs "
            f"{format_shape(target)})")


#: elementwise losses (lowercase, without "loss" and punctuation): these need prediction
#: and target of the same shape and broadcast silently otherwise
ELEMENTWISE_LOSSES = frozenset({
    "mse", "l1", "smoothl1", "huber", "bce", "binarycrossentropy", "bcewithlogits",
    "binarycrossentropywithlogits", "kldiv", "poissonnll", "softmargin",
})


def is_elementwise_loss(name: str) -> bool:
    """Whether ``name`` (``MSELoss``, ``mse_loss``, ``F.l1_loss``...) is an elementwise loss."""
    key = re.sub(r"[^a-z0-9]", "", name.lower().rsplit(".", 1)[-1])
    return key.removesuffix("loss") in ELEMENTWISE_LOSSES


# -- hand-written loss and metric code (the op tracer's rule) ---------------------------
# Intentional broadcasting (a bias add, a (C, 1, 1) per-channel scale, an attention
# mask) happens between a tensor and parameters or constants, never between the
# prediction side and the target side, so the rule only looks at pred-vs-target ops.

#: element-wise binary ops (canonical names, see torchdoctor.hooks.optrace) and how
#: they read in a message
OP_SYMBOLS = {
    "sub": "-", "add": "+", "mul": "*", "div": "/", "pow": "**",
    "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
    "maximum": "max", "minimum": "min",
}
COMPARISONS = frozenset({"eq", "ne", "lt", "le", "gt", "ge"})


def meaning_changes(prediction: Shape, target: Shape) -> bool:
    """Whether an element-wise op between the prediction side and the target side
    broadcasts in a way that changes its meaning: both operands are expanded, which is
    what happens when the batch dimension meets a size-1 dimension (``(B, 1)`` against
    ``(B,)`` gives ``(B, B)``). Scalars and one-element tensors broadcast harmlessly, and
    one operand expanded along the other (``(B, C)`` against ``(B, 1)``) is a mask or a
    per-sample weight."""
    if prediction == target or math.prod(prediction) <= 1 or math.prod(target) <= 1:
        return False
    both = broadcast_shape(prediction, target)
    return both is not None and math.prod(both) > max(math.prod(prediction),
                                                      math.prod(target))


def op_broadcast_message(op: str, left: Shape, right: Shape, prediction_left: bool,
                         reaches: str) -> Explanation:
    """The finding text for a hand-written element-wise op between the prediction side
    and the target side: the shape story ``(64, 1) - (64,) -> (64, 64)`` and the fix.
    ``reaches`` says what the result feeds ("the loss", "a metric")."""
    symbol = OP_SYMBOLS.get(op, op)
    both = broadcast_shape(left, right) or ()
    prediction, target = (left, right) if prediction_left else (right, left)
    story = f"{format_shape(left)} {symbol} {format_shape(right)} -> {format_shape(both)}"
    sides = (f"the prediction side {format_shape(prediction)} and the target side "
             f"{format_shape(target)} broadcast instead of pairing sample with sample")
    if op in COMPARISONS:
        effect = ("every prediction is compared with every target, so an accuracy "
                  "computed from it is wrong (it can exceed 1)")
    else:
        effect = (f"{reaches} is computed over all {math.prod(both)} pairs, so the model "
                  "only learns the mean target")
    return f"{story}: {sides}; {effect} (torch raises nothing)", \
        _op_fix(prediction, target, symbol)


def _op_fix(prediction: Shape, target: Shape, symbol: str) -> str:
    if prediction[:-1] == target and prediction[-1:] == (1,):
        return f"pred.squeeze(1) {symbol} target (or target.view_as(pred))"
    if target[:-1] == prediction and target[-1:] == (1,):
        return f"pred {symbol} target.squeeze(1) (or pred.view_as(target))"
    if math.prod(prediction) == math.prod(target):
        return f"pred {symbol} target.view_as(pred)"
    return (f"make the prediction and the target the same shape ({format_shape(prediction)}"
            f" vs {format_shape(target)})")


def broadcast_problem(node: OpNode, operands: Sequence[Any]) -> OpProblem | None:
    """The op tracer's rule: ``node`` is an element-wise op called by user code on two
    tensors, one from the prediction side (derived from a model's output) and one from
    elsewhere that is not a parameter (targets, labels); report it when the broadcast
    changes its meaning. None otherwise."""
    from torchdoctor.scriptrun.observations import OpProblem

    if node.op not in OP_SYMBOLS or len(operands) != 2 or len(node.inputs) != 2:
        return None
    left, right = node.inputs
    left_pred, right_pred = bool(left and left.pred), bool(right and right.pred)
    if left_pred == right_pred:
        return None
    other = operands[1] if left_pred else operands[0]
    if getattr(other, "requires_grad", False):
        return None  # a parameter: intentional broadcasting (a learned scale, a bias)
    shapes = tuple(tuple(int(s) for s in t.shape) for t in operands)
    prediction, target = (shapes[0], shapes[1]) if left_pred else (shapes[1], shapes[0])
    if not meaning_changes(prediction, target):
        return None
    reaches = "a metric" if node.op in COMPARISONS else "the loss"
    message, hint = op_broadcast_message(node.op, shapes[0], shapes[1], left_pred, reaches)
    return OpProblem(SHAPE_CHECK, "broadcast", "error", message, hint, node.location)
