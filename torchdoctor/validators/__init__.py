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
    check_loss_expression(loss_fn, prediction, targets)  # NumericsError / ShapeError

Two pure helpers are the checks' own diagnoses, which they run on script observations:
:func:`explain_shape_error` (:mod:`torchdoctor.diagnoses.shapes`: torch's shape errors
as a message and a fix) and :func:`loss_input_problems`
(:mod:`torchdoctor.diagnoses.loss_inputs`: works from :class:`TensorSummary` objects
only). The validators take their words and ids from :mod:`torchdoctor.diagnoses`, so a
validator and ``torchdoctor check`` say one bug the same way.

The package's modules, one job each: ``common`` (raising/warning with findings),
``devices`` (:func:`check_devices`), ``batch`` (:func:`check_batch`), ``output``
(:func:`check_output`), ``loss_inputs`` (:func:`check_loss_inputs`, loss names);
``shape_errors`` and ``loss_rules`` keep their old import paths. User code imports from
``torchdoctor.validators``; the modules' paths may change.
"""

from __future__ import annotations

from torchdoctor.validators.batch import REFERENCE_MEAN, REFERENCE_STD, check_batch
from torchdoctor.validators.common import BATCH_CHECK, DEVICE_CHECK, LOSS_CHECK, SHAPE_CHECK
from torchdoctor.validators.devices import check_devices
from torchdoctor.validators.loss_inputs import (
    canonical_loss_name,
    check_loss_inputs,
    loss_input_problems,
    loss_name_of,
)
from torchdoctor.validators.loss_rules import SHAPE_KINDS, LossInputProblem, broadcast_shape
from torchdoctor.validators.numerics import check_loss_expression
from torchdoctor.validators.output import check_output
from torchdoctor.validators.shape_errors import explain_shape_error

__all__ = [
    "BATCH_CHECK",
    "DEVICE_CHECK",
    "LOSS_CHECK",
    "REFERENCE_MEAN",
    "REFERENCE_STD",
    "SHAPE_CHECK",
    "SHAPE_KINDS",
    "LossInputProblem",
    "broadcast_shape",
    "canonical_loss_name",
    "check_batch",
    "check_devices",
    "check_loss_expression",
    "check_loss_inputs",
    "check_output",
    "explain_shape_error",
    "loss_input_problems",
    "loss_name_of",
]
