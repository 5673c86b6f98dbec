"""Does the model learn? ``assert_params_update`` (one step updates every parameter)
and ``assert_overfits_batch`` (a copy memorises one batch)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from torchdoctor.engine.state import preserved_state
from torchdoctor.findings import Finding
from torchdoctor.reference.trainer import forward, train_steps
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

#: assert_overfits_batch passes once the loss is below this fraction of its first value
OVERFIT_RATIO = 0.05
OVERFIT_STEPS = 300


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


def _curve(losses: list[float]) -> str:
    """A few points of the loss curve: ``step 0: 2.30, step 75: 1.20, ...``."""
    picks = sorted({0, *(len(losses) * k // 4 for k in (1, 2, 3)), len(losses) - 1})
    return "loss by step: " + ", ".join(f"{i}: {losses[i]:.4g}" for i in picks)


def _overfit_findings(losses: list[float], target: float, steps: int) -> list[Finding]:
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if bad is not None:
        return [error("overfit-batch", f"the loss became {losses[bad]} at step {bad}",
                      "loss", "lower the learning rate or clip gradients; find where "
                      "NaN/inf starts with torchdoctor.hooks.NonFiniteTracer")]
    message = (f"could not overfit one batch: the loss went from {losses[0]:.4g} to "
               f"{losses[-1]:.4g} (best {min(losses):.4g}) in {len(losses)} steps, "
               f"target < {target:.4g}")
    hint = ("a model that cannot memorise a single batch has a bug: the loss input "
            "(softmax before CrossEntropyLoss?), targets that do not match the outputs, "
            "frozen or detached layers, a learning rate far off; or raise steps= for "
            f"a larger model (ran {steps})")
    return [error("overfit-batch", message, "loss", hint)]


def _overfit_losses(model: nn.Module, batch: Any, loss_fn: LossFn | None,
                    optimizer_factory: OptimizerFactory | None, steps: int,
                    threshold: float | None) -> tuple[list[float], float]:
    """Train a copy on ``batch`` until the loss is below the target; (losses, target).
    No losses when the loss is not connected to any trainable parameter."""
    trial, opt = make_trial(model, optimizer_factory, adam)
    inputs, targets = split_batch(batch_for(trial, batch))
    loss = loss_fn or default_loss
    if not compute_loss(forward(trial, inputs), targets, loss).requires_grad:
        return [], math.nan
    losses = train_steps(trial, (inputs, targets), loss, opt, 1)
    target = threshold if threshold is not None else OVERFIT_RATIO * abs(losses[0])
    if math.isfinite(losses[0]) and not losses[0] < target:
        losses += train_steps(trial, (inputs, targets), loss, opt, steps - 1,
                              stop_below=target)
    return losses, target


def assert_overfits_batch(model: nn.Module, batch: Any = None, loss_fn: LossFn | None = None,
                          optimizer_factory: OptimizerFactory | None = None, *,
                          steps: int = OVERFIT_STEPS, threshold: float | None = None,
                          seed: int | None = 0) -> list[float]:
    """Fail unless a copy of ``model`` can drive the loss on one fixed batch close to 0.

    Trains a deep copy (training mode) for up to ``steps`` steps on ``batch``
    (default: 32 FashionMNIST images, or the synthetic stand-in) with
    ``optimizer_factory(params)`` (default Adam, lr 1e-3), stopping as soon as the loss
    is below ``threshold`` (default: 5% of the first loss). A healthy model memorises
    one batch; one that cannot has a bug. On failure the message shows the loss curve
    and names parameters a step does not update. Returns the losses.
    """
    __tracebackhide__ = True
    batch = _default_batch() if batch is None else batch
    with preserved_state(seed):
        losses, target = _overfit_losses(model, batch, loss_fn, optimizer_factory, steps,
                                         threshold)
    if losses and min(losses) < target:  # NaN compares False: a NaN run fails below
        return losses
    with preserved_state(seed):
        stale = stale_findings(one_step(model, batch, loss_fn, optimizer_factory),
                               "overfit-batch")
    found = _overfit_findings(losses, target, steps) if losses else []
    fail("the model could not overfit a single batch", found + stale,
         _curve(losses) if losses else "")
