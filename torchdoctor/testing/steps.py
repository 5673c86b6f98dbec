"""One training step on a copy, and why a parameter it should have updated did not
change (shared by :func:`assert_params_update` and :func:`assert_overfits_batch`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchdoctor.diagnoses import parameters
from torchdoctor.findings import Finding
from torchdoctor.reference.trainer import forward
from torchdoctor.tensors import stored_values
from torchdoctor.testing.describe import shape_text, where
from torchdoctor.testing.errors import error
from torchdoctor.testing.trial import (
    LossFn,
    OptimizerSpec,
    adam,
    batch_for,
    compute_loss,
    make_trial,
    split_batch,
)


@dataclass
class StepResult:
    """One training step on a copy: the copy, its parameters before the step, their
    gradients, the loss, and the names of parameters in the optimizer."""

    model: nn.Module
    before: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None]
    loss: float
    optimized: set[str]
    loss_has_graph: bool = True


def one_step(model: nn.Module, batch: Any, loss_fn: LossFn | None,
             optimizer: OptimizerSpec) -> StepResult:
    """zero_grad, forward, loss, backward and step on a copy of ``model``, recording the
    trainable parameters before the step and their gradients."""
    trial, opt = make_trial(model, optimizer, adam)
    named = {n: p for n, p in trial.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in named.items()}
    in_groups = {id(p) for group in opt.param_groups for p in group["params"]}
    optimized = {n for n, p in named.items() if id(p) in in_groups}
    inputs, targets = split_batch(batch_for(trial, batch))
    opt.zero_grad(set_to_none=True)
    loss = compute_loss(forward(trial, inputs), targets, loss_fn)
    if loss.requires_grad:
        loss.backward()
    grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in named.items()}
    opt.step()
    return StepResult(trial, before, grads, float(loss.detach()), optimized,
                      loss.requires_grad)


_STALE_HINTS = {
    "no-graph": parameters.NO_GRAPH_HINT,
    "not-in-optimizer": parameters.NOT_IN_OPTIMIZER_HINT,
    "no-grad": parameters.NO_GRADIENT_HINT,
    "zero-grad": "the loss does not depend on it here: dead ReLUs (all pre-activations "
                 "negative), a zero-initialised layer after it, masking, or an unused "
                 "output branch",
    "nonfinite": "the gradient holds NaN/inf: see assert_finite and torchdoctor's "
                 "nan-loss check",
    "no-change": "its gradient is non-zero but optimizer.step() left it unchanged: check "
                 "the learning rate of its parameter group (0, or too small for the "
                 "parameter's magnitude)",
}
#: the finding id of each reason, where it is a bug class of its own (the same id as
#: watch() reports); other reasons keep the id of the helper that found them
_STALE_IDS = {
    "no-graph": parameters.NO_GRADIENT_ID,
    "not-in-optimizer": parameters.NOT_IN_OPTIMIZER_ID,
    "no-grad": parameters.NO_GRADIENT_ID,
    "zero-grad": parameters.NO_GRADIENT_ID,
}


def _stale_reason(step: StepResult, name: str) -> tuple[str, str]:
    """Why parameter ``name`` did not change: (kind, sentence)."""
    grad = step.grads[name]
    if not step.loss_has_graph:
        return "no-graph", f"{parameters.NO_GRAPH_PHRASE}, so no gradient reached it"
    if name not in step.optimized:
        return "not-in-optimizer", "it is not in the optimizer's param_groups"
    if grad is None:
        return "no-grad", "it received no gradient (.grad is None)"
    if not bool(torch.isfinite(stored_values(grad)).all()):
        return "nonfinite", "its gradient holds NaN/inf"
    if not bool(stored_values(grad).ne(0).any()):
        return "zero-grad", "its gradient is exactly zero"
    return "no-change", "the optimizer step did not change it"


def _stale_message(step: StepResult, name: str, old: torch.Tensor) -> tuple[str, str] | None:
    """(message, kind) when parameter ``name`` did not learn from the loss, else None."""
    kind, reason = _stale_reason(step, name)
    if torch.equal(old, step.model.get_parameter(name).detach()):
        return f"{name} (shape {shape_text(old)}) did not change after one training step: " \
               f"{reason}", kind
    if kind in ("no-graph", "no-grad", "zero-grad"):  # moved by weight decay or momentum only
        return f"{name} (shape {shape_text(old)}) changed only through the optimizer's " \
               f"weight decay or momentum: {reason}", kind
    return None


def stale_findings(step: StepResult, check: str) -> list[Finding]:
    """An error finding for each parameter the step did not update through its gradient:
    ``not-in-optimizer`` or ``no-gradient`` when that is why, else of helper ``check``."""
    findings = []
    for name, old in step.before.items():
        stale = _stale_message(step, name, old)
        if stale is not None:
            message, kind = stale
            findings.append(error(_STALE_IDS.get(kind, check), message,
                                  where(step.model, name), _STALE_HINTS[kind]))
    return findings
