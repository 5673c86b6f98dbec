"""Translating torch's shape errors into "which module expected what, and got what",
and spotting prediction/target pairs that broadcast in an elementwise loss.

torch reports a shape error in terms of the operation (``mat1 and mat2 shapes cannot be
multiplied (1792x28 and 784x256)``); users think in layers (``fc1 expects 784 features and
got (64, 1, 28, 28)``). :func:`explain_shape_error` maps one onto the other from the
error message, the module that raised and the summaries of its inputs, so it works for
a live exception (model mode) and for a recorded message (script mode) alike.
No torch import at module level.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from torchdoctor.scriptrun.observations import ModuleInfo, TensorSummary

Explanation = tuple[str, str]
Shape = tuple[int, ...]
_Handler = Callable[[re.Match[str], ModuleInfo | None, Shape | None], Explanation]

_INTS = r"([\d, ]*)"


def _ints(text: str) -> Shape:
    return tuple(int(p) for p in re.findall(r"-?\d+", text))


def _name(module: ModuleInfo | None) -> str:
    if module is None:
        return "this operation"
    if module.qualname:
        return module.qualname
    # a loss module called on its own, or the root model's own forward code
    is_loss = module.type_name.endswith("Loss")
    return module.type_name if is_loss else f"the model ({module.type_name})"


def _target_size(m: re.Match[str], module: ModuleInfo | None,
                 shape: Shape | None) -> Explanation:
    expected, got = _ints(m.group(1)), _ints(m.group(2))
    return (f"the loss expects targets of shape {expected} for this output but got "
            f"{got}: the output has an extra dimension",
            "a classifier must return (batch, classes): squeeze or flatten the output "
            "(e.g. output.squeeze(1)) before the loss")


def _multi_target(m: re.Match[str], module: ModuleInfo | None,
                  shape: Shape | None) -> Explanation:
    return ("the loss expects class indices of shape (batch,) but the targets have "
            "more dimensions",
            "pass targets.view(-1) (or targets.argmax(1) for one-hot targets)")


def _broadcast(m: re.Match[str], module: ModuleInfo | None,
               shape: Shape | None) -> Explanation:
    a, b, dim = m.group(1), m.group(2), m.group(3)
    where = f"{_name(module)} got {shape}: " if module and shape else ""
    return (f"{where}two tensors have sizes {a} and {b} in dimension {dim}",
            "print the shapes on that line; make the sizes match (or 1 to broadcast)")


def _layernorm(m: re.Match[str], module: ModuleInfo | None,
               shape: Shape | None) -> Explanation:
    expected, got = _ints(m.group(1)), _ints(m.group(3))
    tail = got[-len(expected):] if expected else got
    return (f"{_name(module)} normalises the last dims {expected} but got {got}",
            f"set normalized_shape={list(tail)} to match its input")


def _loss_size(m: re.Match[str], module: ModuleInfo | None,
               shape: Shape | None) -> Explanation:
    target, prediction = _ints(m.group(1)), _ints(m.group(2))
    return broadcast_message(module.type_name if module else "the loss", prediction, target)


#: torch's UserWarning of the elementwise losses, and BCE's errors, about differing shapes
_TARGET_SIZE = re.compile(r"arget size \(torch\.Size\(\[" + _INTS + r"\]\)\) (?:that is "
                          r"different to the|must be the same as) input size "
                          r"\(torch\.Size\(\[" + _INTS + r"\]\)\)")


def target_size_shapes(text: str) -> tuple[Shape, Shape] | None:
    """``(prediction, target)`` shapes from torch's "Using a target size (...) that is
    different to the input size (...)" warning (or BCE's error), else None."""
    found = _TARGET_SIZE.search(text)
    return (_ints(found.group(2)), _ints(found.group(1))) if found else None


_HANDLERS: list[tuple[re.Pattern[str], _Handler]] = [
    (re.compile(r"Expected target size \[" + _INTS + r"\], got \[" + _INTS + r"\]"),
     _target_size),
    (re.compile(r"0D or 1D target tensor expected, multi-target not supported"), _multi_target),
    (re.compile(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) "
                r"at non-singleton dimension (\d+)"), _broadcast),
    (re.compile(r"Given normalized_shape=\[" + _INTS + r"\], expected input with shape "
                r"\[\*, " + _INTS + r"\], but got input of size\s*\[" + _INTS + r"\]"),
     _layernorm),
    (_TARGET_SIZE, _loss_size),
]

#: words of torch's shape errors that no specific handler knows
_GENERIC = ("shape", "size of tensor", "sizes of tensors", "dimension out of range",
            "input of size", "must match the size")


def _first_shape(inputs: Sequence[TensorSummary]) -> Shape | None:
    return tuple(inputs[0].shape) if inputs else None


def explain_shape_error(exc: BaseException | str, module: ModuleInfo | None,
                        inputs: Sequence[TensorSummary] = ()) -> Explanation | None:
    """``(message, hint)`` for a shape error raised by ``module`` (None: not in a module)
    on ``inputs``, or None when ``exc`` (an exception or its message) is no shape error.

    Layer errors (Linear, conv, BatchNorm, view, batch size) are explained by
    :func:`torchdoctor.validators.explain_shape_error`; the loss-side and generic ones here.
    """
    from torchdoctor.validators import explain_shape_error as explain_layer_error

    layer_message, layer_hint = explain_layer_error(exc, module, inputs)
    if layer_message:
        return layer_message, layer_hint
    text = exc if isinstance(exc, str) else str(exc)
    shape = _first_shape(inputs)
    for pattern, handler in _HANDLERS:
        found = pattern.search(text)
        if found:
            return handler(found, module, shape)
    lowered = text.lower()
    if "device" in lowered or not any(word in lowered for word in _GENERIC):
        return None
    got = f" got {shape}" if module and shape else ""
    return (f"{_name(module)}{got}: {text.splitlines()[0]}",
            "print the shapes there and make the layer's expected size match its input")


def broadcastable(a: Shape, b: Shape) -> bool:
    """Whether two shapes broadcast against each other."""
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))


def broadcast_shape(a: Shape, b: Shape) -> Shape:
    """The shape two broadcastable shapes broadcast to."""
    width = max(len(a), len(b))
    pa, pb = (1,) * (width - len(a)) + a, (1,) * (width - len(b)) + b
    return tuple(max(x, y) for x, y in zip(pa, pb))


def silent_broadcast(prediction: Shape, target: Shape) -> bool:
    """Prediction and target differ in shape but broadcast, so an elementwise loss
    compares the wrong pairs instead of failing."""
    return prediction != target and broadcastable(prediction, target)


def broadcast_message(loss: str, prediction: Shape, target: Shape) -> Explanation:
    """The finding text for a prediction/target pair that broadcasts in ``loss``."""
    both = broadcast_shape(prediction, target)
    message = (f"{loss} compares prediction {prediction} with target {target}: they "
               f"broadcast to {both}")
    if math.prod(both) > max(math.prod(prediction), math.prod(target)):
        message += ", so every prediction is compared with every target"
    message += "; the loss is wrong and the model cannot learn (torch only warns)"
    return message, _broadcast_fix(prediction, target)


def _broadcast_fix(prediction: Shape, target: Shape) -> str:
    if prediction[:-1] == target and prediction[-1:] == (1,):
        return "loss_fn(output.squeeze(1), targets) (or targets.view_as(output))"
    if target[:-1] == prediction and target[-1:] == (1,):
        return "loss_fn(output, targets.squeeze(1)) (or output.view_as(targets))"
    if math.prod(prediction) == math.prod(target):
        return "loss_fn(output, targets.view_as(output))"
    return f"make output and targets the same shape ({prediction} vs {target})"


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
