"""Does the model learn? ``assert_params_update`` (one step updates every parameter)
and ``assert_overfits_batch`` (a copy memorises one batch)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchdoctor.diagnoses import overfit
from torchdoctor.diagnoses.overfit import Fit
from torchdoctor.engine.state import preserved_state
from torchdoctor.findings import Finding
from torchdoctor.reference.trainer import forward
from torchdoctor.testing.errors import error, fail
from torchdoctor.testing.steps import one_step, stale_findings
from torchdoctor.testing.trial import (
    LossFn,
    OptimizerFactory,
    OptimizerSpec,
    adam,
    batch_for,
    compute_loss,
    default_loss,
    make_trial,
    split_batch,
)

#: assert_overfits_batch's default target: this fraction of the first loss (or 0.05)
OVERFIT_RATIO = overfit.RELATIVE_TARGET
#: assert_overfits_batch's default step budget: the overfit-one-batch check's
OVERFIT_STEPS = overfit.MAX_STEPS


def assert_params_update(model: nn.Module, batch: Any, loss_fn: LossFn | None = None,
                         optimizer: OptimizerSpec = None, *, seed: int | None = 0) -> None:
    """Fail unless one training step changes every trainable parameter through its
    gradient.

    The step runs on a deep copy of ``model`` (in training mode): zero_grad, forward,
    ``loss_fn(output, targets)``, backward, step. ``optimizer`` is an optimizer built
    over ``model`` (copied along with it), a factory ``params -> optimizer``, or None
    (Adam, lr 1e-3, which moves every parameter whose gradient is not zero). Frozen
    parameters (``requires_grad=False``) are not checked. The failure names each
    parameter that did not change and why (no gradient, zero gradient, not in the
    optimizer...); a parameter moved only by weight decay or momentum, without a
    gradient, fails too. ``model`` and the global RNG are untouched.
    """
    __tracebackhide__ = True
    with preserved_state(seed):
        step = one_step(model, batch, loss_fn, optimizer)
        findings = stale_findings(step, "params-update")
    if not step.before:
        fail("the model has no trainable parameters (all have requires_grad=False)")
    if findings:
        fail(f"{len(findings)} of {len(step.before)} trainable parameter(s) did not "
             f"learn in one training step (loss {step.loss:.4g})", findings)


def _default_batch() -> tuple[torch.Tensor, torch.Tensor]:
    from torchdoctor.reference.data import reference_batch

    inputs, targets, _kind = reference_batch(32)
    return inputs, targets


def _overfit_findings(fit: Fit, steps: int) -> list[Finding]:
    """The check's words for a copy that did not fit (one more hint: raise ``steps``)."""
    blew_up = overfit.diverged("the model", fit, "the optimizer")
    if blew_up is not None:
        return [error(overfit.FINDING_ID, blew_up, "loss", overfit.DIVERGED_HINT)]
    hint = (f"{overfit.CANNOT_FIT_HINT}; or raise steps= for a larger model (ran {steps})")
    return [error(overfit.FINDING_ID, overfit.cannot_fit("the model", fit), "loss", hint)]


def _fit_copy(model: nn.Module, batch: Any, loss_fn: LossFn | None,
              optimizer_factory: OptimizerFactory | None, steps: int,
              threshold: float | None) -> Fit | None:
    """Train a copy on ``batch`` with the check's loop; None when the loss is not
    connected to any trainable parameter."""
    trial, opt = make_trial(model, optimizer_factory, adam)
    inputs, targets = split_batch(batch_for(trial, batch))
    loss = loss_fn or default_loss
    if not compute_loss(forward(trial, inputs), targets, loss).requires_grad:
        return None
    return overfit.fit_one_batch(trial, (inputs, targets), loss, opt, max_steps=steps,
                                 target=threshold)


def assert_overfits_batch(model: nn.Module, batch: Any = None, loss_fn: LossFn | None = None,
                          optimizer_factory: OptimizerFactory | None = None, *,
                          steps: int = OVERFIT_STEPS, threshold: float | None = None,
                          seed: int | None = 0) -> list[float]:
    """Fail unless a copy of ``model`` can drive the loss on one fixed batch close to 0.

    Trains a deep copy (training mode) for up to ``steps`` steps on ``batch``
    (default: 32 FashionMNIST images, or the synthetic stand-in) with
    ``optimizer_factory(params)`` (default Adam, lr 1e-3), stopping as soon as the loss
    is below ``threshold``. It passes when the lowest loss (in training, or in eval()
    after it) reaches ``threshold``; without one, the overfit-one-batch check's target
    and judgement apply: within 2x of 5% of the first loss (or of 0.05). A healthy model
    memorises one batch; one that cannot has a bug. On failure the message shows the
    loss curve and names parameters a step does not update. Returns the losses.
    """
    __tracebackhide__ = True
    batch = _default_batch() if batch is None else batch
    with preserved_state(seed):
        fit = _fit_copy(model, batch, loss_fn, optimizer_factory, steps, threshold)
    if fit is not None and fit.converged:
        return fit.losses
    with preserved_state(seed):
        stale = stale_findings(one_step(model, batch, loss_fn, optimizer_factory),
                               overfit.FINDING_ID)
    found = _overfit_findings(fit, steps) if fit is not None else []
    fail("the model cannot fit one batch", found + stale, fit.curve() if fit else "")
