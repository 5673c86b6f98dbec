"""Prediction and target that broadcast against each other in an elementwise loss:
the silent shape bug (``(64, 1)`` against ``(64,)`` in MSELoss compares every
prediction with every target, and torch only warns).

The one home of the detection (:func:`broadcast_shape`, :func:`silent_broadcast`,
torch's warning read by :func:`target_size_shapes`), the words and the fix
(:func:`broadcast_message`), used by the ``shape-mismatch`` check and by
:func:`torchdoctor.validators.check_loss_inputs`. No torch import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from torchdoctor.diagnoses.wording import format_shape

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
