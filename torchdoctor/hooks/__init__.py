"""Removable hook sets for the user's own training code: shapes, non-finite values and
activation statistics, cheap enough to leave on.

Every hook set is a context manager. It keeps each hook handle in one list and removes
them all in ``__exit__`` (also when the block raised), so the user's model is left as it
was: no attribute is set on any module, and no tensor or autograd graph is kept alive;
records hold :class:`~torchdoctor.observations.TensorSummary` objects, plain numbers,
or small per-unit flag tensors owned by the recorder::

    with ShapeTracer(model) as shapes:
        model(inputs)
    print(shapes.table())

    with NonFiniteTracer(model) as nan:
        loss_fn(model(inputs), targets).backward()
    if nan.found:
        print(nan.first_output, nan.first_gradient)

    report = localize_nonfinite(model, inputs, loss_fn, targets)   # replays on a copy

The package's modules, one job each: ``base`` (:class:`HookSet`, module and tensor
summaries, finiteness tests), ``shapes`` (:class:`ShapeTracer`), ``nonfinite``
(:class:`NonFiniteTracer` and its findings), ``localize``
(:func:`localize_nonfinite`), ``activations`` (:class:`ActivationStats`), ``replica``
(hook-free model copies and cloned inputs for replays). User code imports from
``torchdoctor.hooks``; the modules' paths may change.
"""

from __future__ import annotations

from torchdoctor.hooks.activations import ACTIVATION_MEASURES, ActivationStats
from torchdoctor.hooks.base import HookSet, module_info, shape_summaries, shape_summary
from torchdoctor.hooks.localize import NonFiniteReport, localize_nonfinite
from torchdoctor.hooks.nonfinite import NONFINITE_CHECK_ID, NonFiniteHit, NonFiniteTracer
from torchdoctor.hooks.replica import copy_without_hooks
from torchdoctor.hooks.shapes import ShapeRecord, ShapeTracer

__all__ = [
    "ACTIVATION_MEASURES",
    "NONFINITE_CHECK_ID",
    "ActivationStats",
    "HookSet",
    "NonFiniteHit",
    "NonFiniteReport",
    "NonFiniteTracer",
    "ShapeRecord",
    "ShapeTracer",
    "copy_without_hooks",
    "localize_nonfinite",
    "module_info",
    "shape_summaries",
    "shape_summary",
]
