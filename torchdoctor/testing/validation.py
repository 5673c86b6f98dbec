"""Assertions over :mod:`torchdoctor.validators`: one device, the output shape, a sane
batch. The validators' typed errors become :class:`TorchDoctorAssertionError`."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchdoctor.engine.state import preserved_state
from torchdoctor.errors import DiagnosisError
from torchdoctor.reference.trainer import forward
from torchdoctor.testing.errors import fail_from_diagnosis


def assert_same_device(model: nn.Module, *tensors: Any) -> None:
    """Fail unless the model's parameters and buffers and every tensor in ``tensors``
    (nested structures allowed) are on one device; names what is where."""
    __tracebackhide__ = True
    from torchdoctor.validators import check_devices

    try:
        check_devices(model, *tensors)
    except DiagnosisError as exc:
        fail_from_diagnosis(exc)


def assert_output_shape(model: nn.Module, example: Any, expected_shape: Sequence[int | None]
                        ) -> None:
    """Fail unless ``model(example)`` returns a tensor of ``expected_shape`` (``None``
    entries match any size). On a mismatch, or when the forward pass itself fails on
    shapes, the message names the module and the fix and shows the shapes flowing
    through every module. The model is run under ``no_grad`` and left as it was."""
    __tracebackhide__ = True
    from torchdoctor.validators import check_output

    try:
        check_output(model, example, expected_shape)
    except DiagnosisError as exc:
        fail_from_diagnosis(exc, _shape_table(model, example))


def _shape_table(model: nn.Module, example: Any) -> str:
    """Input and output shapes of every module call, on a copy of ``model``."""
    from torchdoctor.hooks import ShapeTracer

    trial = copy.deepcopy(model)
    tracer = ShapeTracer(trial)
    with preserved_state(), torch.no_grad(), tracer:
        try:
            forward(trial, example)
        except Exception:  # the table shows how far the forward pass got
            pass
    return "shapes through the model:\n" + tracer.table()


def assert_valid_batch(batch: Any, *, num_classes: int | None = None,
                       reference: bool = True) -> None:
    """Fail when a batch (``(inputs, targets)``, a dict or a bare inputs tensor) has
    NaN/inf, constant inputs, raw 0..255 pixels (with ``reference``, compared with
    FashionMNIST after ``ToTensor()``), mismatched batch sizes or, with
    ``num_classes``, labels out of range. Suspicious-only findings are warnings."""
    __tracebackhide__ = True
    from torchdoctor.validators import check_batch

    try:
        check_batch(batch, num_classes=num_classes, reference=reference)
    except DiagnosisError as exc:
        fail_from_diagnosis(exc)
