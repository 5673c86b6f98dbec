"""explain_shape_error: torch's shape RuntimeErrors (Linear, conv, BatchNorm, the losses,
view) turned into a message naming the module and a fix. Pure: it works from messages
and summaries, so the checks run it on a script's recorded errors too."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from torchdoctor.scriptrun.observations import ModuleInfo, TensorSummary
from torchdoctor.validators.common import SPLIT_SAMPLES_HINT, format_shape

_MATMUL = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")
_CHANNELS = re.compile(r"weight of size \[([\d, ]+)\], expected input\[([\d, ]+)\] to have "
                       r"(\d+) channels, but got (\d+) channels")
_RANK = re.compile(r"Expected (\d)D \(unbatched\) or (\d)D \(batched\) input to (\w+), "
                   r"but got input of size: \[([\d, ]*)\]")
_NORM = re.compile(r"running_mean should contain (\d+) elements not (\d+)")
_BATCH = re.compile(r"Expected input batch_size \((\d+)\) to match target batch_size \((\d+)\)")
_VIEW = re.compile(r"shape '\[([-\d, ]+)\]' is invalid for input of size (\d+)")


def explain_shape_error(exc: BaseException | str, module_info: ModuleInfo | None,
                        input_summaries: Sequence[TensorSummary]) -> tuple[str, str]:
    """Turn one of torch's shape RuntimeErrors into ``(message, hint)``.

    ``module_info`` is the module that was executing (None: unknown) and
    ``input_summaries`` its inputs. ``exc`` may be the exception or its message (script
    mode only records messages). Recognised: Linear's "mat1 and mat2 shapes cannot
    be multiplied", conv's "expected input ... to have N channels", "Expected 3D
    (unbatched) or 4D (batched) input", BatchNorm's "running_mean should contain",
    the losses' "Expected input batch_size ... to match target batch_size" and view's
    "shape ... is invalid for input of size". Returns ``("", "")`` for anything else.
    """
    text = str(exc)
    shape = tuple(input_summaries[0].shape) if input_summaries else None
    for pattern, explain in _EXPLAINERS:
        match = pattern.search(text)
        if match:
            return explain(match, module_info, shape)
    return "", ""


def _names(module: ModuleInfo | None) -> tuple[str, str]:
    """(description for messages, short name for hints)."""
    if module is None:
        return "a layer", "the layer"
    short = f"{module.qualname} ({module.type_name})" if module.qualname else "the model"
    return module.describe(), short


def _ints(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"-?\d+", text)]


def _explain_matmul(m: re.Match[str], module: ModuleInfo | None,
                    shape: tuple[int, ...] | None) -> tuple[str, str]:
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
                      shape: tuple[int, ...] | None) -> tuple[str, str]:
    weight, seen = _ints(m.group(1)), tuple(_ints(m.group(2)))
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
                  shape: tuple[int, ...] | None) -> tuple[str, str]:
    batched, op, seen = int(m.group(2)), m.group(3), tuple(_ints(m.group(4)))
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
                  shape: tuple[int, ...] | None) -> tuple[str, str]:
    got, wanted = int(m.group(1)), int(m.group(2))
    where, name = _names(module)
    seen = f" {format_shape(shape)}" if shape else ""
    message = f"{where} expects {wanted} features/channels (dim 1) but its input{seen} has {got}"
    return message, f"set num_features={got} in {name} to match the layer before it"


def _explain_batch(m: re.Match[str], module: ModuleInfo | None,
                   shape: tuple[int, ...] | None) -> tuple[str, str]:
    got, wanted = m.groups()
    message = f"the prediction has batch size {got} but the target has {wanted}"
    return message, SPLIT_SAMPLES_HINT


def _explain_view(m: re.Match[str], module: ModuleInfo | None,
                  shape: tuple[int, ...] | None) -> tuple[str, str]:
    where, _ = _names(module)
    message = (f"in {where}: view/reshape to {format_shape(_ints(m.group(1)))} does not fit "
               f"a tensor of {m.group(2)} elements")
    return message, "use x.flatten(1) or x.view(x.size(0), -1) instead of fixed sizes"


_Explainer = Callable[[re.Match[str], ModuleInfo | None, tuple[int, ...] | None],
                      tuple[str, str]]
_EXPLAINERS: list[tuple[re.Pattern[str], _Explainer]] = [
    (_MATMUL, _explain_matmul), (_CHANNELS, _explain_channels), (_RANK, _explain_rank),
    (_NORM, _explain_norm), (_BATCH, _explain_batch), (_VIEW, _explain_view),
]
