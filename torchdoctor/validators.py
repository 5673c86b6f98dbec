"""Validators: plain functions to call in your own training code.

Each one checks one thing and returns None when all is well. A fault raises a typed
error from :mod:`torchdoctor.errors` whose message names the module, the shapes or the
devices and the fix, and whose ``findings`` hold the same as
:class:`~torchdoctor.findings.Finding` objects. Findings that are only suspicious
(warnings) are reported with :func:`warnings.warn` instead, and the function returns None::

    check_devices(model, inputs, targets)        # DeviceMismatchError
    check_batch((inputs, targets), num_classes=10)   # BatchError
    check_output(model, inputs, (None, 10))      # ShapeError
    check_loss_inputs(logits, targets, loss_fn)  # LossInputError / ShapeError

Two pure helpers are shared with the checks, which run them on script observations:
:func:`explain_shape_error` (turn torch's shape RuntimeErrors into a message and a fix)
and :func:`loss_input_problems` (works from :class:`TensorSummary` objects only).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from torchdoctor.errors import (
    BatchError,
    DeviceMismatchError,
    DiagnosisError,
    LossInputError,
    ShapeError,
)
from torchdoctor.findings import Finding, Severity
from torchdoctor.observations import ModuleInfo, TensorSummary
from torchdoctor.tensors import first_tensor, summarize

DEVICE_CHECK = "device-mismatch"
SHAPE_CHECK = "shape-mismatch"
LOSS_CHECK = "loss-function"
BATCH_CHECK = "batch"

#: FashionMNIST after transforms.ToTensor(): values in [0, 1] with these statistics
REFERENCE_MEAN = 0.286
REFERENCE_STD = 0.353

ERROR, WARNING = Severity.ERROR, Severity.WARNING


def _conclude(findings: list[Finding], error: type[DiagnosisError]) -> None:
    """Raise ``error`` carrying all findings if one is an error; warn about the rest."""
    if any(f.severity is ERROR for f in findings):
        raise error("\n".join(_line(f) for f in findings), findings)
    for finding in findings:
        warnings.warn(_line(finding), UserWarning, stacklevel=3)


def _line(finding: Finding) -> str:
    fix = f" Fix: {finding.hint}" if finding.hint else ""
    return f"{finding.message}.{fix}"


def _shape(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


# ---------------------------------------------------------------- devices


def check_devices(model: nn.Module, *tensors: Any) -> None:
    """Check that every parameter and buffer of ``model`` and every tensor in
    ``tensors`` (nested lists, tuples and dicts too) is on one device.

    Raises :class:`~torchdoctor.errors.DeviceMismatchError` naming the parameters or
    buffers (qualified names) and tensor positions (``tensors[1]['image']``) that are
    not on the model's device, and the fix.
    """
    placed = list(_model_devices(model))
    given = list(_walk(tensors, "tensors"))
    home = _home_device(placed) or next((str(t.device) for _, t in given), None)
    findings = _model_device_findings(placed, home)
    findings += [_tensor_device_finding(label, t, home) for label, t in given
                 if str(t.device) != home]
    _conclude(findings, DeviceMismatchError)


def _model_devices(model: nn.Module) -> Iterator[tuple[str, str, int]]:
    for name, param in model.named_parameters():
        yield name, str(param.device), param.numel()
    for name, buffer in model.named_buffers():
        yield name, str(buffer.device), buffer.numel()


def _home_device(placed: list[tuple[str, str, int]]) -> str | None:
    """The device holding most of the model's values (ties: the first one's)."""
    sizes: Counter[str] = Counter()
    for _, device, numel in placed:
        sizes[device] += numel + 1  # +1: a model of empty tensors still has a home
    return max(sizes, key=lambda d: sizes[d]) if sizes else None


def _walk(value: Any, label: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a nested value with their positions: ``tensors[1]['image']``."""
    if isinstance(value, torch.Tensor):
        yield label, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, f"{label}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{label}[{key!r}]")


def _model_device_findings(placed: list[tuple[str, str, int]],
                           home: str | None) -> list[Finding]:
    stray = [(name, device) for name, device, _ in placed if device != home]
    if not stray:
        return []
    names = ", ".join(f"{name} ({device})" for name, device in stray[:5])
    more = f" and {len(stray) - 5} more" if len(stray) > 5 else ""
    message = f"model parameters/buffers {names}{more} are not on {home} like the rest"
    hint = ("move the whole model once, after building it: model.to(device); a tensor "
            "made in __init__ must be an nn.Parameter or a buffer (self.register_buffer) "
            "so that .to() moves it")
    return [Finding(DEVICE_CHECK, ERROR, message, stray[0][0], hint)]


def _tensor_device_finding(label: str, tensor: torch.Tensor, home: str | None) -> Finding:
    message = (f"{label} {_shape(tensor.shape)} is on {tensor.device} but the model is "
               f"on {home}")
    hint = ("move the model and every batch tensor to one device: model.to(device); "
            "inputs, targets = inputs.to(device), targets.to(device)")
    return Finding(DEVICE_CHECK, ERROR, message, label, hint)


# ---------------------------------------------------------------- batches

_INPUT_KEYS = ("inputs", "input", "x", "images", "image", "data", "pixel_values", "features")
_TARGET_KEYS = ("targets", "target", "y", "labels", "label")


def check_batch(batch: Any, *, num_classes: int | None = None, reference: bool = True) -> None:
    """Check one batch: ``(inputs, targets)`` (tuple or list), a dict with keys such as
    ``inputs``/``image`` and ``targets``/``label``, or a bare inputs tensor.

    Always checked: NaN/inf, constant inputs, inputs and targets of different batch
    sizes. With ``reference=True`` the value range is compared with FashionMNIST after
    ``ToTensor()`` (values in [0, 1], mean 0.286, std 0.353): raw 0..255 pixels (uint8,
    or floats up to ~255) are errors, values divided by 255 twice a warning. With
    ``num_classes`` the targets are class labels: integers in [0, num_classes) (or
    probability rows of width ``num_classes``). Raises :class:`~torchdoctor.errors.BatchError`.
    """
    inputs, targets = _split_batch(batch)
    findings: list[Finding] = []
    for label, tensor in _walk(inputs, "inputs"):
        findings += _input_findings(label, tensor, reference)
    if isinstance(targets, torch.Tensor):
        findings += _target_findings(targets, num_classes)
        findings += _batch_size_findings(first_tensor(inputs), targets)
    _conclude(findings, BatchError)


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, dict):
        inputs = next((batch[k] for k in _INPUT_KEYS if k in batch), None)
        targets = next((batch[k] for k in _TARGET_KEYS if k in batch), None)
        if inputs is None:
            inputs = {k: v for k, v in batch.items() if k not in _TARGET_KEYS}
        return inputs, targets
    if isinstance(batch, (list, tuple)) and not isinstance(batch, torch.Size):
        return (batch[0] if batch else None), (batch[1] if len(batch) > 1 else None)
    return batch, None


def _input_findings(label: str, tensor: torch.Tensor, reference: bool) -> list[Finding]:
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return []
    if tensor.dtype == torch.uint8 and reference:
        return [_finding(BATCH_CHECK, ERROR, f"{label} {_shape(tensor.shape)} are uint8 (raw "
                         "pixel values 0..255): the model needs float inputs in [0, 1]",
                         label, _SCALE_HINT)]
    if not tensor.is_floating_point():
        return []
    summary = summarize(tensor)
    if not summary.finite:
        return [_finding(BATCH_CHECK, ERROR, f"{label} hold NaN/inf", label,
                         "find where the data goes bad: a Normalize with std 0, a division "
                         "by zero in a transform, missing values in the source")]
    return _range_findings(label, summary, tensor.numel(), reference)


_SCALE_HINT = "use transforms.ToTensor() (it scales to [0, 1]) or divide: x = x.float() / 255"


def _range_findings(label: str, s: TensorSummary, numel: int, reference: bool) -> list[Finding]:
    low, high = s.min or 0.0, s.max or 0.0
    if numel > 1 and low == high:
        return [_finding(BATCH_CHECK, ERROR, f"every value of {label} is {low:g}: a constant "
                         "input carries no information", label,
                         "check the loading and transform code (a Normalize with the wrong "
                         "mean, blank images, a wrong index)")]
    if not reference or low < 0:
        return []
    stats = (f"values in [{low:g}, {high:g}], mean {s.mean or 0.0:.3g} (FashionMNIST after "
             f"ToTensor: [0, 1], mean {REFERENCE_MEAN}, std {REFERENCE_STD})")
    if 1.5 < high <= 255.5:
        return [_finding(BATCH_CHECK, ERROR, f"{label} look like raw 0..255 pixel values: "
                         f"{stats}", label, _SCALE_HINT)]
    if high <= 1.01 / 255:
        return [_finding(BATCH_CHECK, WARNING, f"{label} are tiny, divided by 255 twice? "
                         f"{stats}", label, "ToTensor() already divides by 255: remove "
                         "the extra / 255")]
    return []


def _target_findings(targets: torch.Tensor, num_classes: int | None) -> list[Finding]:
    if targets.device.type == "meta" or targets.numel() == 0:
        return []
    if targets.is_floating_point() and not bool(torch.isfinite(targets).all()):
        return [_finding(BATCH_CHECK, ERROR, "targets hold NaN/inf", "targets",
                         "clean the labels (missing values?) before training")]
    if num_classes is None or targets.dtype == torch.bool:
        return []
    if targets.is_floating_point():
        return _float_label_findings(targets, num_classes)
    return _label_range_findings(int(targets.min()), int(targets.max()), num_classes)


def _float_label_findings(targets: torch.Tensor, num_classes: int) -> list[Finding]:
    if targets.dim() >= 2 and targets.shape[1] == num_classes:
        if float(targets.min()) < 0 or float(targets.max()) > 1:
            return [_finding(BATCH_CHECK, ERROR, "probability targets outside [0, 1]",
                             "targets", "soft labels must be probabilities per class")]
        return []
    if bool((targets == targets.round()).all()):
        message = (f"labels are {_dtype(targets.dtype)} class numbers: class indices must "
                   "be int64 (CrossEntropyLoss rejects float indices)")
        return [_finding(BATCH_CHECK, ERROR, message, "targets", "targets = targets.long()")]
    return [_finding(BATCH_CHECK, ERROR, f"labels hold non-integer values (e.g. "
                     f"{float(targets[targets != targets.round()][0]):g}): classification "
                     f"labels are class indices 0..{num_classes - 1}", "targets",
                     "use integer class labels (targets.long()), or a regression loss")]


def _label_range_findings(low: int, high: int, num_classes: int) -> list[Finding]:
    if low >= 0 and high < num_classes:
        return []
    message = (f"labels range {low}..{high} but num_classes={num_classes}: labels must "
               f"lie in [0, {num_classes})")
    if low == 1 and high == num_classes:
        hint = "the labels start at 1: subtract 1 (targets - 1)"
    else:
        hint = (f"remap the labels to 0..{num_classes - 1}, or give the model "
                f"{high + 1} outputs (out_features={high + 1})")
    return [_finding(BATCH_CHECK, ERROR, message, "targets", hint)]


def _batch_size_findings(inputs: torch.Tensor | None, targets: torch.Tensor) -> list[Finding]:
    if inputs is None or inputs.dim() == 0 or targets.dim() == 0:
        return []
    if inputs.shape[0] == targets.shape[0]:
        return []
    return [_finding(BATCH_CHECK, ERROR, f"inputs hold {inputs.shape[0]} samples "
                     f"{_shape(inputs.shape)} but targets {targets.shape[0]} "
                     f"{_shape(targets.shape)}", "batch",
                     "pair every input with its target: check the dataset's __getitem__ "
                     "and the collate function")]


def _finding(check: str, severity: Severity, message: str, location: str,
             hint: str) -> Finding:
    return Finding(check, severity, message, location, hint)


def _dtype(dtype: torch.dtype | str) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------- model output


def check_output(model: nn.Module, example: Any,
                 expected_shape: Sequence[int | None]) -> None:
    """Run ``model`` on ``example`` (a tuple is unpacked: ``model(*example)``) and check
    the output's shape against ``expected_shape`` (``None`` entries match any size).

    The forward runs under ``no_grad`` in the model's current mode, with the RNG forked
    and the buffers (BatchNorm running statistics) restored afterwards, so the model is
    left as it was. When the forward itself fails on a shape, the error is translated
    into a :class:`~torchdoctor.errors.ShapeError` naming the module, what it expects,
    what it got and the fix (``flatten first: nn.Flatten() before fc1``).
    """
    output, tracer = _traced_forward(model, example)
    tensor = first_tensor(output)
    got = tuple(tensor.shape) if tensor is not None else ()
    if tensor is not None and _shape_matches(got, expected_shape):
        return
    message = (f"the model's output has shape {_shape(got)} but "
               f"{_expected(expected_shape)} was expected" if tensor is not None
               else "the model's output holds no tensor")
    last = _last_layer(tracer.records)
    finding = Finding(SHAPE_CHECK, ERROR, message, last.describe() if last else "",
                      _output_hint(got, expected_shape, last))
    _conclude([finding], ShapeError)


def _traced_forward(model: nn.Module, example: Any) -> tuple[Any, Any]:
    from torchdoctor.hooks import ShapeTracer

    tracer = ShapeTracer(model)
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=_cuda_indices(model)), tracer:
            output = model(*example) if isinstance(example, tuple) else model(example)
    except Exception as exc:
        translated = _translate(exc, tracer)
        if translated is None:
            raise
        raise translated from exc
    finally:
        with torch.no_grad():  # BatchNorm updates its running statistics in train mode
            for buffer, value in saved:
                buffer.copy_(value)
    return output, tracer


def _cuda_indices(model: nn.Module) -> list[int]:
    return sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})


def _translate(exc: Exception, tracer: Any) -> ShapeError | None:
    call = tracer.failed_at
    module = call.module if call is not None else None
    message, hint = explain_shape_error(exc, module, call.inputs if call else ())
    if not message:
        return None
    finding = Finding(SHAPE_CHECK, ERROR, message, module.describe() if module else "", hint)
    return ShapeError(_line(finding), [finding])


def _shape_matches(got: tuple[int, ...], expected: Sequence[int | None]) -> bool:
    return len(got) == len(expected) and all(e is None or e == g for g, e in zip(got, expected))


def _expected(expected: Sequence[int | None]) -> str:
    return "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"


def _last_layer(records: Sequence[Any]) -> ModuleInfo | None:
    """The last Linear/Conv-like call (a module with out_features/out_channels)."""
    for record in reversed(records):
        if re.search(r"out_(features|channels)=", record.detail):
            return record.module
    return None


def _output_hint(got: tuple[int, ...], expected: Sequence[int | None],
                 last: ModuleInfo | None) -> str:
    if len(got) == len(expected) and got and expected[0] not in (None, got[0]):
        return ("a view()/reshape merged or split samples: flatten with x.flatten(1) or "
                "x.view(x.size(0), -1), never x.view(-1, N) with a guessed N")
    if len(got) == len(expected) and got and expected[-1] not in (None, got[-1]) and last:
        return (f"the last layer {last.describe()} gives {got[-1]} outputs: make it "
                f"out_features={expected[-1]}")
    if len(got) > len(expected) and 1 in got:
        return "remove the extra size-1 dimension: output.squeeze(dim) or x.flatten(1)"
    return f"reshape inside forward so the model returns {_expected(expected)}"


# ---------------------------------------------------------------- shape errors

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
    seen = _shape(shape) if shape else f"a {rows}x{got} matrix"
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
    message = (f"{where} expects {wanted} input channels (dim 1) but got input {_shape(seen)} "
               f"with {got}")
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
               f"{_shape(seen)}")
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
    seen = f" {_shape(shape)}" if shape else ""
    message = f"{where} expects {wanted} features/channels (dim 1) but its input{seen} has {got}"
    return message, f"set num_features={got} in {name} to match the layer before it"


def _explain_batch(m: re.Match[str], module: ModuleInfo | None,
                   shape: tuple[int, ...] | None) -> tuple[str, str]:
    got, wanted = m.groups()
    message = f"the prediction has batch size {got} but the target has {wanted}"
    return message, ("a view()/reshape merged or split samples: flatten with x.flatten(1) or "
                     "x.view(x.size(0), -1), never x.view(-1, N) with a guessed N")


def _explain_view(m: re.Match[str], module: ModuleInfo | None,
                  shape: tuple[int, ...] | None) -> tuple[str, str]:
    where, _ = _names(module)
    message = (f"in {where}: view/reshape to {_shape(_ints(m.group(1)))} does not fit a "
               f"tensor of {m.group(2)} elements")
    return message, "use x.flatten(1) or x.view(x.size(0), -1) instead of fixed sizes"


_Explainer = Callable[[re.Match[str], ModuleInfo | None, tuple[int, ...] | None],
                      tuple[str, str]]
_EXPLAINERS: list[tuple[re.Pattern[str], _Explainer]] = [
    (_MATMUL, _explain_matmul), (_CHANNELS, _explain_channels), (_RANK, _explain_rank),
    (_NORM, _explain_norm), (_BATCH, _explain_batch), (_VIEW, _explain_view),
]


# ---------------------------------------------------------------- loss inputs

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
    _conclude(findings, ShapeError if shape_error else LossInputError)


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
    problems = _common_problems(prediction, target)
    if problems or name not in _RULES:
        return problems
    ignore_index = int((options or {}).get("ignore_index", -100))
    return _RULES[name](prediction, target, ignore_index)


def _common_problems(pred: TensorSummary, target: TensorSummary | None) -> list[_P]:
    if not pred.is_floating:
        return [_P("prediction-dtype", ERROR, f"the prediction is {_dtype(pred.dtype)}: a "
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
    elif _classes(pred) and not pred.log_probabilities:
        found.append(_P("not-log-probabilities", ERROR, f"NLLLoss got raw logits (values in "
                        f"[{pred.min:.3g}, {pred.max:.3g}]), not log-probabilities",
                        "add nn.LogSoftmax(dim=1) as the last layer, or use "
                        "CrossEntropyLoss on the logits"))
    return found + _index_target_problems(pred, target, "NLLLoss", ignore_index,
                                          soft_ok=False)


def _class_dim_problems(pred: TensorSummary, loss: str) -> list[_P]:
    if len(pred.shape) >= 2 and pred.shape[1] == 1:
        return [_P("single-unit", ERROR, f"{loss} over a single output unit "
                   f"{_shape(pred.shape)}: the softmax of one logit is always 1, so the loss "
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
        return [_P("target-dtype", ERROR, f"the targets are {_dtype(target.dtype)} "
                   f"{_shape(target.shape)}: {loss} needs int64 class indices",
                   "targets = targets.long()")]
    found = []
    if target.dtype not in ("torch.int64", "torch.uint8"):
        found.append(_P("target-dtype", ERROR, f"the targets are {_dtype(target.dtype)}: "
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
                   f"{_shape(target.shape)}: {loss} wants shape {_shape(wanted)}",
                   "targets = targets.squeeze(1)")]
    return [_P("target-shape", ERROR, f"prediction {_shape(pred.shape)} and class-index "
               f"targets {_shape(target.shape)} do not match in shape: {loss} wants targets "
               f"of shape {_shape(wanted)}", "flatten with x.flatten(1), never "
               "x.view(-1, N), and keep one label per sample")]


def _index_range_problems(pred: TensorSummary, target: TensorSummary, loss: str,
                          ignore_index: int) -> list[_P]:
    classes, low, high = _classes(pred), target.min, target.max
    if classes is None or low is None or high is None:
        return []
    if (low >= 0 or low == ignore_index) and high < classes:
        return []
    hint = ("the labels start at 1: subtract 1 (targets - 1)" if low == 1 and high == classes
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
        found.append(_P("target-dtype", ERROR, f"the targets are {_dtype(target.dtype)}: "
                        f"{loss} needs float targets", "targets = targets.float()"))
    if (target.min is not None and target.min < 0) or (target.max or 0) > 1:
        found.append(_P("target-range", ERROR, f"the targets range [{target.min:.3g}, "
                        f"{target.max:.3g}]: {loss} targets are probabilities in [0, 1]",
                        "for more than two classes use CrossEntropyLoss with class indices"))
    if target.shape != pred.shape:
        found.append(_P("target-shape", ERROR, f"prediction {_shape(pred.shape)} and target "
                        f"{_shape(target.shape)} differ in shape: {loss} needs equal shapes",
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
            return [_P("target-dtype", ERROR, f"integer class labels {_shape(target.shape)} "
                       f"against {classes} outputs in a regression loss",
                       "use CrossEntropyLoss for classification")]
        return [_P("target-dtype", ERROR, f"the targets are {_dtype(target.dtype)}: a "
                   "regression loss needs float targets", "targets = targets.float()")]
    return _broadcast_problems(pred.shape, target.shape)


def _broadcast_problems(pred: tuple[int, ...], target: tuple[int, ...]) -> list[_P]:
    if pred == target:
        return []
    joint = broadcast_shape(pred, target)
    if joint is None:
        return [_P("target-shape", ERROR, f"prediction {_shape(pred)} and target "
                   f"{_shape(target)} shapes do not match", _same_shape_hint(pred, target))]
    return [_P("broadcast", ERROR, f"prediction {_shape(pred)} and target {_shape(target)} "
               f"broadcast to {_shape(joint)}: every prediction is compared with every target "
               "and the model only learns the mean", _same_shape_hint(pred, target))]


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
_RULES: dict[str, _Rule] = {
    "CrossEntropyLoss": _cross_entropy, "NLLLoss": _nll,
    "BCEWithLogitsLoss": _bce_with_logits, "BCELoss": _bce, "KLDivLoss": _kl_div,
    **dict.fromkeys(_REGRESSION, _regression),
}
