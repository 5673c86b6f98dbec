"""Assembling the training setup (batch, loss, optimizer) and the hook-built model that
model-mode checks train, from the reference and the user's hook functions.

The user's file may define ``torchdoctor_model()``, ``torchdoctor_batch()``,
``torchdoctor_loss()`` and ``torchdoctor_optimizer(params)`` (see
:mod:`torchdoctor.hookspecs`); each replaces the reference's part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchdoctor.engine.context import CheckOptions, ModelCandidate, TrainingSetup
from torchdoctor.errors import TargetError


def hook_candidates(hook: Any) -> list[ModelCandidate]:
    """The model of the file's ``torchdoctor_model()``, or [] when it defines none."""
    model_hook = hook.torchdoctor_model
    if not model_hook.get_hookimpls():
        return []
    return [ModelCandidate("torchdoctor_model()", "the file's torchdoctor_model()",
                           _model_from_hook(model_hook))]


def _model_from_hook(hook: Any) -> Callable[[], Any]:
    def build() -> Any:
        from torch import nn

        model = hook()
        if not isinstance(model, nn.Module):
            raise TargetError(f"torchdoctor_model() returned {type(model).__name__}, "
                              "not an nn.Module")
        return model

    return build


def user_training_setup(hook: Any, options: CheckOptions) -> TrainingSetup:
    """The reference setup, with each part replaced by the user's hook function when
    their file defines one."""
    batch = None
    if hook.torchdoctor_batch.get_hookimpls():
        def batch() -> tuple[Any, ...]:
            return tuple(hook.torchdoctor_batch())

    setup = training_setup(options, batch=batch, batch_source="torchdoctor_batch()")
    if hook.torchdoctor_loss.get_hookimpls():
        setup.make_loss = lambda: hook.torchdoctor_loss()
        setup.source["loss"] = "torchdoctor_loss()"
    if hook.torchdoctor_optimizer.get_hookimpls():
        setup.make_optimizer = lambda params: hook.torchdoctor_optimizer(params=params)
        setup.source["optimizer"] = "torchdoctor_optimizer(params)"
    return setup


def training_setup(options: CheckOptions, *, batch: Callable[[], Any] | None = None,
                   batch_source: str = "batch given") -> TrainingSetup:
    """The reference setup; with ``batch``, the reference data is never loaded (no
    FashionMNIST read, no synthetic-data notice for a model that does not use it)."""
    from torchdoctor.reference.trainer import reference_loss, reference_optimizer, reference_setup

    if batch is None:
        return reference_setup(options)
    return TrainingSetup(make_batch=batch, make_loss=reference_loss,
                         make_optimizer=reference_optimizer, data=batch_source,
                         source={"batch": batch_source, "loss": "reference",
                                 "optimizer": "reference"})
