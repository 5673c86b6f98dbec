"""Shape errors: torch's shape exceptions translated into "which module expected what,
and got what", with the fix.

torch reports a shape error in terms of the operation (``mat1 and mat2 shapes cannot be
multiplied (1792x28 and 784x256)``); users think in layers (``fc1 expects 784 input
features but got input (64, 1, 28, 28)``). :func:`explain_shape_error` maps one onto the
other from the error message, the module that raised and the summaries of its inputs,
so it works for a live exception (model mode, :func:`torchdoctor.validators.check_output`)
and for a recorded message (script mode) alike. The one home of these words: the
``shape-mismatch`` check and the validators both call it. No torch import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from torchdoctor.diagnoses.broadcasting import SHAPE_CHECK as _SHAPE_CHECK
from torchdoctor.diagnoses.broadcasting import (
    TARGET_SIZE,
    Explanation,
    Shape,
    broadcast_message,
    ints,
)
from torchdoctor.diagnoses.wording import format_shape
from torchdoctor.scriptrun.observations import ModuleInfo, TensorSummary

#: the finding id of shape bugs (defined beside the broadcasting rules, which need it
#: too and sit below this module)
SHAPE_CHECK = _SHAPE_CHECK
#: the fix when a view()/reshape mixed samples up (wrong batch size downstream)
SPLIT_SAMPLES_HINT = ("a view()/reshape merged or split samples: flatten with x.flatten(1) "
                      "or x.view(x.size(0), -1), never x.view(-1, N) with a guessed N")
#: what :func:`explain_shape_error` returns for an error that is no shape error
NOT_A_SHAPE_ERROR: Explanation = ("", "")

_INTS = r"([\d, ]*)"
_Explainer = Callable[[re.Match[str], ModuleInfo | None, Shape | None], Explanation]


def explain_shape_error(exc: BaseException | str, module_info: ModuleInfo | None,
                        input_summaries: Sequence[TensorSummary] = ()) -> Explanation:
    """Turn one of torch's shape errors into ``(message, hint)``.

    ``module_info`` is the module that was executing (None: unknown) and
    ``input_summaries`` its inputs. ``exc`` may be the exception or its message (script
    mode only records messages). Recognised: Linear's "mat1 and mat2 shapes cannot
    be multiplied", conv's "expected input ... to have N channels", "Expected 3D
    (unbatched) or 4D (batched) input", BatchNorm's "running_mean should contain",
    the losses' "Expected input batch_size ... to match target batch_size", view's
    "shape ... is invalid for input of size", the losses' target-size errors, LayerNorm's
    "Given normalized_shape", broadcasting errors, and any other error that speaks of
    shapes or sizes. Returns ``("", "")`` (:data:`NOT_A_SHAPE_ERROR`) for anything else.
    """
    text = exc if isinstance(exc, str) else str(exc)
    shape = tuple(input_summaries[0].shape) if input_summaries else None
    for pattern, explain in _EXPLAINERS:
        match = pattern.search(text)
        if match:
            return explain(match, module_info, shape)
    return _generic(text, module_info, shape)


#: words of torch's shape errors that no specific explainer knows
_GENERIC = ("shape", "size of tensor", "sizes of tensors", "dimension out of range",
            "input of size", "must match the size")


def _generic(text: str, module: ModuleInfo | None, shape: Shape | None) -> Explanation:
    lowered = text.lower()
    if "device" in lowered or not any(word in lowered for word in _GENERIC):
        return NOT_A_SHAPE_ERROR
    got = f" got {format_shape(shape)}" if module and shape else ""
    return (f"{_short_name(module)}{got}: {text.splitlines()[0]}",
            "print the shapes there and make the layer's expected size match its input")


def _names(module: ModuleInfo | None) -> tuple[str, str]:
    """(description for messages, short name for hints)."""
    if module is None:
        return "a layer", "the layer"
    short = f"{module.qualname} ({module.type_name})" if module.qualname else "the model"
    return module.describe(), short


def _short_name(module: ModuleInfo | None) -> str:
    if module is None:
        return "this operation"
    if module.qualname:
        return module.qualname
    # a loss module called on its own, or the root model's own forward code
    is_loss = module.type_name.endswith("Loss")
    return module.type_name if is_loss else f"the model ({module.type_name})"


def _explain_matmul(m: re.Match[str], module: ModuleInfo | None,
                    shape: Shape | None) -> Explanation:
    rows, got, wanted, out = (int(g) for g in m.groups())
    where, name = _names(module)
    seen = format_shape(shape) if shape else f"a {rows}x{got} matrix"
    message = (f"{where} expects {wanted} input features (last dim) but got input {seen} "
               f"whose last dim is {got}")
    if shape and len(shape) >= 3:
        flat = math.prod(shape[1:])
        hint = (f"flatten first: nn.Flatten() before {name} (or x = x.flatten(1))"
                if flat == wanted else f"flatten first (nn.Flatten() before {name}) and set "
                f"in_features={flat}: nn.Linear({flat}, {out})")
    else:
        hint = (f"set in_features={got} in {name}: nn.Linear({got}, {out}), or make the "
                f"previous layer output {wanted} features")
    return message, hint


def _explain_channels(m: re.Match[str], module: ModuleInfo | None,
                      shape: Shape | None) -> Explanation:
    weight, seen = ints(m.group(1)), ints(m.group(2))
    wanted, got = int(m.group(3)), int(m.group(4))
    where, name = _names(module)
    message = (f"{where} expects {wanted} input channels (dim 1) but got input "
               f"{format_shape(seen)} with {got}")
    if len(seen) >= 3 and seen[-1] == wanted:
        hint = "the input is channels-last: permute it to (N, C, H, W): x.permute(0, 3, 1, 2)"
    else:
        hint = (f"set in_channels={got} in {name} (nn.Conv{len(seen) - 2}d({got}, "
                f"{weight[0]}, ...)), or give the data {wanted} channels")
    return message, hint


def _explain_rank(m: re.Match[str], module: ModuleInfo | None,
                  shape: Shape | None) -> Explanation:
    batched, op, seen = int(m.group(2)), m.group(3), ints(m.group(4))
    where, name = _names(module)
    message = (f"{where} ({op}) expects a {batched}D batched input (N, C, ...) but got "
               f"{format_shape(seen)}")
    side = math.isqrt(seen[-1]) if seen else 0
    if len(seen) == 2 and batched == 4 and side * side == seen[-1]:
        hint = (f"reshape to images before {name}: x.view(-1, 1, {side}, {side}), or remove "
                "the nn.Flatten() in front of it")
    elif len(seen) == batched - 1:
        hint = f"add the channel dimension before {name}: x.unsqueeze(1)"
    else:
        hint = f"reshape the input of {name} to {batched} dims (N, C, ...)"
    return message, hint


def _explain_norm(m: re.Match[str], module: ModuleInfo | None,
                  shape: Shape | None) -> Explanation:
    got, wanted = int(m.group(1)), int(m.group(2))
    where, name = _names(module)
    seen = f" {format_shape(shape)}" if shape else ""
    message = f"{where} expects {wanted} features/channels (dim 1) but its input{seen} has {got}"
    return message, f"set num_features={got} in {name} to match the layer before it"


def _explain_batch(m: re.Match[str], module: ModuleInfo | None,
                   shape: Shape | None) -> Explanation:
    got, wanted = m.groups()
    message = f"the prediction has batch size {got} but the target has {wanted}"
    return message, SPLIT_SAMPLES_HINT


def _explain_view(m: re.Match[str], module: ModuleInfo | None,
                  shape: Shape | None) -> Explanation:
    where, _ = _names(module)
    message = (f"in {where}: view/reshape to {format_shape(ints(m.group(1)))} does not fit "
               f"a tensor of {m.group(2)} elements")
    return message, "use x.flatten(1) or x.view(x.size(0), -1) instead of fixed sizes"


def _explain_target_size(m: re.Match[str], module: ModuleInfo | None,
                         shape: Shape | None) -> Explanation:
    expected, got = ints(m.group(1)), ints(m.group(2))
    return (f"the loss expects targets of shape {format_shape(expected)} for this output but "
            f"got {format_shape(got)}: the output has an extra dimension",
            "a classifier must return (batch, classes): squeeze or flatten the output "
            "(e.g. output.squeeze(1)) before the loss")


def _explain_multi_target(m: re.Match[str], module: ModuleInfo | None,
                          shape: Shape | None) -> Explanation:
    return ("the loss expects class indices of shape (batch,) but the targets have "
            "more dimensions",
            "pass targets.view(-1) (or targets.argmax(1) for one-hot targets)")


def _explain_broadcast(m: re.Match[str], module: ModuleInfo | None,
                       shape: Shape | None) -> Explanation:
    a, b, dim = m.group(1), m.group(2), m.group(3)
    where = f"{_short_name(module)} got {format_shape(shape)}: " if module and shape else ""
    return (f"{where}two tensors have sizes {a} and {b} in dimension {dim}",
            "print the shapes on that line; make the sizes match (or 1 to broadcast)")


def _explain_layernorm(m: re.Match[str], module: ModuleInfo | None,
                       shape: Shape | None) -> Explanation:
    expected, got = ints(m.group(1)), ints(m.group(3))
    tail = got[-len(expected):] if expected else got
    return (f"{_short_name(module)} normalises the last dims {format_shape(expected)} but "
            f"got {format_shape(got)}", f"set normalized_shape={list(tail)} to match its input")


def _explain_loss_size(m: re.Match[str], module: ModuleInfo | None,
                       shape: Shape | None) -> Explanation:
    target, prediction = ints(m.group(1)), ints(m.group(2))
    return broadcast_message(module.type_name if module else "the loss", prediction, target)


_EXPLAINERS: list[tuple[re.Pattern[str], _Explainer]] = [
    (re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)"),
     _explain_matmul),
    (re.compile(r"weight of size \[([\d, ]+)\], expected input\[([\d, ]+)\] to have "
                r"(\d+) channels, but got (\d+) channels"), _explain_channels),
    (re.compile(r"Expected (\d)D \(unbatched\) or (\d)D \(batched\) input to (\w+), "
                r"but got input of size: \[([\d, ]*)\]"), _explain_rank),
    (re.compile(r"running_mean should contain (\d+) elements not (\d+)"), _explain_norm),
    (re.compile(r"Expected input batch_size \((\d+)\) to match target batch_size \((\d+)\)"),
     _explain_batch),
    (re.compile(r"shape '\[([-\d, ]+)\]' is invalid for input of size (\d+)"), _explain_view),
    (re.compile(r"Expected target size \[" + _INTS + r"\], got \[" + _INTS + r"\]"),
     _explain_target_size),
    (re.compile(r"0D or 1D target tensor expected, multi-target not supported"),
     _explain_multi_target),
    (re.compile(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) "
                r"at non-singleton dimension (\d+)"), _explain_broadcast),
    (re.compile(r"Given normalized_shape=\[" + _INTS + r"\], expected input with shape "
                r"\[\*, " + _INTS + r"\], but got input of size\s*\[" + _INTS + r"\]"),
     _explain_layernorm),
    (TARGET_SIZE, _explain_loss_size),
]


def explain_bare_matmul(text: str) -> tuple[str, str] | None:
    """A matrix product outside any layer (``x @ w`` in a raw-tensor program or in data
    preparation): explained as a product, not as a Linear layer's in_features."""
    found = re.search(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and "
                      r"(\d+)x(\d+)\)", text)
    if found is None:
        return None
    rows, inner_a, inner_b, cols = found.groups()
    return (f"a matrix product of ({rows}x{inner_a}) and ({inner_b}x{cols}) outside any "
            f"layer: the inner sizes differ ({inner_a} vs {inner_b})",
            "the first operand's last size must equal the second's first: transpose or "
            "reshape one of them (x @ w.T), or build w with shape "
            f"({inner_a}, {cols})")
