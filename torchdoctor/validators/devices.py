"""check_devices: every parameter, buffer and batch tensor on the model's device."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from torchdoctor.diagnoses.devices import (
    MOVE_HINT,
    PARAMS_OFF_HINT,
    params_off_device_message,
    tensor_off_device_message,
)
from torchdoctor.diagnoses.wording import name_list
from torchdoctor.errors import DeviceMismatchError
from torchdoctor.findings import Finding
from torchdoctor.validators.common import (
    DEVICE_CHECK,
    ERROR,
    conclude,
    format_shape,
    labelled_tensors,
)


def check_devices(model: nn.Module, *tensors: Any) -> None:
    """Check that every parameter and buffer of ``model`` and every tensor in
    ``tensors`` (nested lists, tuples and dicts too) is on one device.

    Raises :class:`~torchdoctor.errors.DeviceMismatchError` naming the parameters or
    buffers (qualified names) and tensor positions (``tensors[1]['image']``) that are
    not on the model's device, and the fix.
    """
    placed = list(_model_devices(model))
    given = list(labelled_tensors(tensors, "tensors"))
    home = _home_device(placed) or next((str(t.device) for _, t in given), None)
    findings = _model_device_findings(placed, home)
    findings += [_tensor_device_finding(label, t, home) for label, t in given
                 if str(t.device) != home]
    conclude(findings, DeviceMismatchError)


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


def _model_device_findings(placed: list[tuple[str, str, int]],
                           home: str | None) -> list[Finding]:
    stray = [(name, device) for name, device, _ in placed if device != home]
    if not stray:
        return []
    names = name_list([f"{name} ({device})" for name, device in stray], 5)
    return [Finding(DEVICE_CHECK, ERROR, params_off_device_message(names, home), stray[0][0],
                    PARAMS_OFF_HINT)]


def _tensor_device_finding(label: str, tensor: torch.Tensor, home: str | None) -> Finding:
    message = tensor_off_device_message(label, format_shape(tensor.shape), str(tensor.device),
                                        home)
    return Finding(DEVICE_CHECK, ERROR, message, label, MOVE_HINT)
