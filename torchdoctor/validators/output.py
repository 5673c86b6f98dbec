"""check_output: run the model once, leaving it as it was, and check the output's shape;
a forward that fails on a shape becomes a ShapeError naming the module and the fix."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchdoctor.errors import ShapeError
from torchdoctor.findings import Finding
from torchdoctor.hooks.replica import cuda_indices
from torchdoctor.hooks.shapes import ShapeRecord, ShapeTracer
from torchdoctor.scriptrun.observations import ModuleInfo
from torchdoctor.tensors import first_tensor
from torchdoctor.validators.common import (
    ERROR,
    SHAPE_CHECK,
    SPLIT_SAMPLES_HINT,
    conclude,
    finding_line,
    format_shape,
)
from torchdoctor.validators.shape_errors import explain_shape_error


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
    message = (f"the model's output has shape {format_shape(got)} but "
               f"{_expected(expected_shape)} was expected" if tensor is not None
               else "the model's output holds no tensor")
    last = _last_layer(tracer.records)
    finding = Finding(SHAPE_CHECK, ERROR, message, last.describe() if last else "",
                      _output_hint(got, expected_shape, last))
    conclude([finding], ShapeError)


def _traced_forward(model: nn.Module, example: Any) -> tuple[Any, ShapeTracer]:
    tracer = ShapeTracer(model)
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=cuda_indices(model)), tracer:
            output = model(*example) if isinstance(example, tuple) else model(example)
    except Exception as exc:  # the user's model raised: re-raised, explained if we can
        translated = _translate(exc, tracer)
        if translated is None:
            raise
        raise translated from exc
    finally:
        with torch.no_grad():  # BatchNorm updates its running statistics in train mode
            for buffer, value in saved:
                buffer.copy_(value)
    return output, tracer


def _translate(exc: Exception, tracer: ShapeTracer) -> ShapeError | None:
    call = tracer.failed_at
    module = call.module if call is not None else None
    message, hint = explain_shape_error(exc, module, call.inputs if call else ())
    if not message:
        return None
    finding = Finding(SHAPE_CHECK, ERROR, message, module.describe() if module else "", hint)
    return ShapeError(finding_line(finding), [finding])


def _shape_matches(got: tuple[int, ...], expected: Sequence[int | None]) -> bool:
    return len(got) == len(expected) and all(e is None or e == g for g, e in zip(got, expected))


def _expected(expected: Sequence[int | None]) -> str:
    return "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"


def _last_layer(records: Sequence[ShapeRecord]) -> ModuleInfo | None:
    """The last Linear/Conv-like call (a module with out_features/out_channels)."""
    for record in reversed(records):
        if re.search(r"out_(features|channels)=", record.detail):
            return record.module
    return None


def _output_hint(got: tuple[int, ...], expected: Sequence[int | None],
                 last: ModuleInfo | None) -> str:
    if len(got) == len(expected) and got and expected[0] not in (None, got[0]):
        return SPLIT_SAMPLES_HINT
    if len(got) == len(expected) and got and expected[-1] not in (None, got[-1]) and last:
        return (f"the last layer {last.describe()} gives {got[-1]} outputs: make it "
                f"out_features={expected[-1]}")
    if len(got) > len(expected) and 1 in got:
        return "remove the extra size-1 dimension: output.squeeze(dim) or x.flatten(1)"
    return f"reshape inside forward so the model returns {_expected(expected)}"
