"""check_batch: NaN/inf, constant or wrongly scaled inputs, bad class labels, and inputs
and targets of different batch sizes."""

from __future__ import annotations

from typing import Any

import torch

from torchdoctor.errors import BatchError
from torchdoctor.findings import Finding, Severity
from torchdoctor.scriptrun.observations import TensorSummary
from torchdoctor.tensors import first_tensor, summarize
from torchdoctor.validators.common import (
    BATCH_CHECK,
    ERROR,
    LABELS_FROM_ONE_HINT,
    WARNING,
    conclude,
    dtype_name,
    format_shape,
    labelled_tensors,
)

#: FashionMNIST after transforms.ToTensor(): values in [0, 1] with these statistics
REFERENCE_MEAN = 0.286
REFERENCE_STD = 0.353

_INPUT_KEYS = ("inputs", "input", "x", "images", "image", "data", "pixel_values", "features")
_TARGET_KEYS = ("targets", "target", "y", "labels", "label")
_SCALE_HINT = "use transforms.ToTensor() (it scales to [0, 1]) or divide: x = x.float() / 255"


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
    for label, tensor in labelled_tensors(inputs, "inputs"):
        findings += _input_findings(label, tensor, reference)
    if isinstance(targets, torch.Tensor):
        findings += _target_findings(targets, num_classes)
        findings += _batch_size_findings(first_tensor(inputs), targets)
    conclude(findings, BatchError)


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


def _batch_finding(severity: Severity, message: str, location: str, hint: str) -> Finding:
    return Finding(BATCH_CHECK, severity, message, location, hint)


def _input_findings(label: str, tensor: torch.Tensor, reference: bool) -> list[Finding]:
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return []
    if tensor.dtype == torch.uint8 and reference:
        return [_batch_finding(ERROR, f"{label} {format_shape(tensor.shape)} are uint8 (raw "
                               "pixel values 0..255): the model needs float inputs in [0, 1]",
                               label, _SCALE_HINT)]
    if not tensor.is_floating_point():
        return []
    summary = summarize(tensor)
    if not summary.finite:
        return [_batch_finding(ERROR, f"{label} hold NaN/inf", label,
                               "find where the data goes bad: a Normalize with std 0, a "
                               "division by zero in a transform, missing values in the source")]
    return _range_findings(label, summary, tensor.numel(), reference)


def _range_findings(label: str, s: TensorSummary, numel: int, reference: bool) -> list[Finding]:
    low, high = s.min or 0.0, s.max or 0.0
    if numel > 1 and low == high:
        return [_batch_finding(ERROR, f"every value of {label} is {low:g}: a constant input "
                               "carries no information", label,
                               "check the loading and transform code (a Normalize with the "
                               "wrong mean, blank images, a wrong index)")]
    if not reference or low < 0:
        return []
    stats = (f"values in [{low:g}, {high:g}], mean {s.mean or 0.0:.3g} (FashionMNIST after "
             f"ToTensor: [0, 1], mean {REFERENCE_MEAN}, std {REFERENCE_STD})")
    if 1.5 < high <= 255.5:
        return [_batch_finding(ERROR, f"{label} look like raw 0..255 pixel values: {stats}",
                               label, _SCALE_HINT)]
    if high <= 1.01 / 255:
        return [_batch_finding(WARNING, f"{label} are tiny, divided by 255 twice? {stats}",
                               label, "ToTensor() already divides by 255: remove the extra "
                               "/ 255")]
    return []


def _target_findings(targets: torch.Tensor, num_classes: int | None) -> list[Finding]:
    if targets.device.type == "meta" or targets.numel() == 0:
        return []
    if targets.is_floating_point() and not bool(torch.isfinite(targets).all()):
        return [_batch_finding(ERROR, "targets hold NaN/inf", "targets",
                               "clean the labels (missing values?) before training")]
    if num_classes is None or targets.dtype == torch.bool:
        return []
    if targets.is_floating_point():
        return _float_label_findings(targets, num_classes)
    return _label_range_findings(int(targets.min()), int(targets.max()), num_classes)


def _float_label_findings(targets: torch.Tensor, num_classes: int) -> list[Finding]:
    if targets.dim() >= 2 and targets.shape[1] == num_classes:
        if float(targets.min()) < 0 or float(targets.max()) > 1:
            return [_batch_finding(ERROR, "probability targets outside [0, 1]", "targets",
                                   "soft labels must be probabilities per class")]
        return []
    if bool((targets == targets.round()).all()):
        message = (f"labels are {dtype_name(targets.dtype)} class numbers: class indices "
                   "must be int64 (CrossEntropyLoss rejects float indices)")
        return [_batch_finding(ERROR, message, "targets", "targets = targets.long()")]
    example = float(targets[targets != targets.round()][0])
    return [_batch_finding(ERROR, f"labels hold non-integer values (e.g. {example:g}): "
                           f"classification labels are class indices 0..{num_classes - 1}",
                           "targets", "use integer class labels (targets.long()), or a "
                           "regression loss")]


def _label_range_findings(low: int, high: int, num_classes: int) -> list[Finding]:
    if low >= 0 and high < num_classes:
        return []
    message = (f"labels range {low}..{high} but num_classes={num_classes}: labels must "
               f"lie in [0, {num_classes})")
    if low == 1 and high == num_classes:
        hint = LABELS_FROM_ONE_HINT
    else:
        hint = (f"remap the labels to 0..{num_classes - 1}, or give the model "
                f"{high + 1} outputs (out_features={high + 1})")
    return [_batch_finding(ERROR, message, "targets", hint)]


def _batch_size_findings(inputs: torch.Tensor | None, targets: torch.Tensor) -> list[Finding]:
    if inputs is None or inputs.dim() == 0 or targets.dim() == 0:
        return []
    if inputs.shape[0] == targets.shape[0]:
        return []
    return [_batch_finding(ERROR, f"inputs hold {inputs.shape[0]} samples "
                           f"{format_shape(inputs.shape)} but targets {targets.shape[0]} "
                           f"{format_shape(targets.shape)}", "batch",
                           "pair every input with its target: check the dataset's "
                           "__getitem__ and the collate function")]
