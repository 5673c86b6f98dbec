"""Assertion helpers for your own tests: ``assert_params_update(model, batch)`` and friends.

Each helper works on copies (your model, optimizer and global RNG are left as they were)
and fails with :class:`TorchDoctorAssertionError`, whose message is the findings table
the ``torchdoctor`` command prints: which module, which parameter, which shapes, and the
fix. They are plain functions: they work under pytest, unittest or a bare script::

    from torchdoctor.testing import assert_overfits_batch, assert_params_update

    def test_model_trains():
        model = MyNet()
        assert_params_update(model, (inputs, targets))   # every parameter gets updated
        assert_overfits_batch(model, (inputs, targets))  # it can memorise one batch

A *batch* is ``(inputs, targets)``; the model is called as ``model(*inputs)`` when
``inputs`` is a tuple, else ``model(inputs)``. Where a helper takes ``loss_fn=None`` it
uses cross-entropy for integer targets and mean squared error for float targets.

The package's modules, one job each: ``errors`` (:class:`TorchDoctorAssertionError`),
``trial`` (batches, default loss, the copies trained), ``describe`` (how messages name
tensors), ``steps`` (one step and why a parameter did not change), ``training``
(:func:`assert_params_update`, :func:`assert_overfits_batch`), ``grad_leak``
(:func:`assert_no_grad_leak`), ``finite`` (:func:`assert_finite`), ``validation``
(device, output shape and batch assertions), ``determinism``
(:func:`assert_eval_deterministic`), ``health`` (:func:`assert_report_ok`,
:func:`assert_healthy`), ``compare`` (:func:`explain_comparison`). Import from
``torchdoctor.testing``, not from them; ``split_batch``, ``default_loss``, the types
``LossFn``/``OptimizerFactory``/``OptimizerSpec`` and ``OVERFIT_RATIO``/``OVERFIT_STEPS``
are importable from here too. The pytest plugin registers the whole package for
assertion rewriting.
"""

from __future__ import annotations

from torchdoctor.testing.compare import explain_comparison
from torchdoctor.testing.determinism import assert_eval_deterministic
from torchdoctor.testing.errors import TorchDoctorAssertionError
from torchdoctor.testing.finite import assert_finite
from torchdoctor.testing.grad_leak import assert_no_grad_leak
from torchdoctor.testing.health import assert_healthy, assert_report_ok
from torchdoctor.testing.numerics import assert_safe_loss
from torchdoctor.testing.training import OVERFIT_RATIO as OVERFIT_RATIO
from torchdoctor.testing.training import OVERFIT_STEPS as OVERFIT_STEPS
from torchdoctor.testing.training import assert_overfits_batch, assert_params_update
from torchdoctor.testing.trial import LossFn as LossFn
from torchdoctor.testing.trial import OptimizerFactory as OptimizerFactory
from torchdoctor.testing.trial import OptimizerSpec as OptimizerSpec
from torchdoctor.testing.trial import default_loss as default_loss
from torchdoctor.testing.trial import split_batch as split_batch
from torchdoctor.testing.validation import (
    assert_output_shape,
    assert_same_device,
    assert_valid_batch,
)

__all__ = [
    "TorchDoctorAssertionError",
    "assert_eval_deterministic",
    "assert_finite",
    "assert_healthy",
    "assert_no_grad_leak",
    "assert_output_shape",
    "assert_overfits_batch",
    "assert_params_update",
    "assert_report_ok",
    "assert_safe_loss",
    "assert_same_device",
    "assert_valid_batch",
    "explain_comparison",
]

