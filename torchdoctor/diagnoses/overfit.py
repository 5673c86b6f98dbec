"""Overfitting one batch: the loop, its step budget and target, and the words of its verdict.

A healthy model drives the loss of one fixed batch near zero; one that cannot has a
bug. The overfit-one-batch check and :func:`torchdoctor.testing.assert_overfits_batch`
both train their copy with :func:`fit_one_batch` and judge it with :attr:`Fit.converged`:
up to :data:`MAX_STEPS` steps, stopping once the loss is under :data:`RELATIVE_TARGET` of
the first one (or under :data:`ABSOLUTE_TARGET`), optionally within a time budget.

Dropout makes the training loss of one batch noisy, so the copy trains in train() as a
user's loop does but is judged by the better of its lowest training loss and its loss in
eval() at the end, against :data:`TOLERANCE` times the derived target (an explicit
target is judged as given). Why a copy cannot fit is :mod:`~torchdoctor.diagnoses.anatomy`'s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the finding id, in ``torchdoctor check`` and in ``assert_overfits_batch``
FINDING_ID = "overfit-one-batch"
#: the most steps spent on one batch (a slow model is reported as still falling)
MAX_STEPS = 300
#: the most seconds the check spends training one model (a slow model is not judged)
BUDGET_SECONDS = 15.0
CHUNK = 10  #: at most this many steps between two looks at the clock
RELATIVE_TARGET = 0.05  #: stop when the loss is below this fraction of the first loss
ABSOLUTE_TARGET = 0.05  #: ... or below this value
TOLERANCE = 2.0  #: converged when the judged loss is within this factor of the target
#: with the script's own setup, a loss whose last steps average less than this share
#: below its first steps does not decrease at all (dropout noise stays well under it)
STUCK_SHARE = 0.02


def default_target(initial: float) -> float:
    """The loss to reach from a first loss of ``initial``: 5 % of it, or 0.05."""
    return max(ABSOLUTE_TARGET, RELATIVE_TARGET * initial)


@dataclass
class Fit:
    """How training a copy on one batch went."""

    losses: list[float]
    eval_loss: float
    seconds: float
    out_of_time: bool
    #: the loss to reach, and the factor above it still judged a fit
    target: float
    tolerance: float = TOLERANCE

    @property
    def initial(self) -> float:
        """The loss before the first update."""
        return self.losses[0]

    @property
    def best(self) -> float:
        """The lowest loss seen: in training, or in eval() at the end."""
        return min([*self.losses, self.eval_loss])

    @property
    def finite(self) -> bool:
        """Whether every loss stayed finite."""
        return all(math.isfinite(v) for v in [*self.losses, self.eval_loss])

    @property
    def converged(self) -> bool:
        """Whether the copy fitted the batch (within the tolerance)."""
        return self.finite and self.best <= self.tolerance * self.target

    @property
    def still_falling(self) -> bool:
        """Whether the loss kept going down steadily (slow, not stuck): the last tenth
        of the run is clearly below the middle of it."""
        half = self.losses[len(self.losses) // 2:]
        tail = half[-max(1, len(self.losses) // 10):]
        return len(self.losses) >= 20 and sum(tail) / len(tail) < 0.9 * half[0]

    @property
    def stuck(self) -> bool:
        """Whether the loss did not decrease at all: the mean of the last steps is within
        :data:`STUCK_SHARE` of the mean of the first ones (or higher). Only judged on a
        full run (not one cut short by the time budget)."""
        return len(self.losses) >= 20 and not self.out_of_time and self.flat

    @property
    def flat(self) -> bool:
        """Whether the loss did not decrease in the steps that ran, as :attr:`stuck`
        measures it, but also on a run cut short by the time budget (where it says less:
        a slow model may not have had the steps to move)."""
        n = len(self.losses)
        k = max(1, min(10, n // 4))
        first, last = sum(self.losses[:k]) / k, sum(self.losses[-k:]) / k
        return n >= 2 and first - last < STUCK_SHARE * abs(first)

    def describe(self, batch_size: int | None = None) -> str:
        """``loss 2.31 -> 1.42 in 200 steps on one batch of 64``."""
        batch = f" of {batch_size}" if batch_size else ""
        steps = f"{len(self.losses)} step" + ("s" if len(self.losses) != 1 else "")
        return f"loss {self.initial:.3g} -> {self.best:.3g} in {steps} on one batch{batch}"

    def curve(self) -> str:
        """A few points of the loss curve: ``loss by step: 0: 2.30, 75: 1.20, ...``."""
        n = len(self.losses)
        picks = sorted({0, *(n * k // 4 for k in (1, 2, 3)), n - 1})
        return "loss by step: " + ", ".join(f"{i}: {self.losses[i]:.4g}" for i in picks)


def fit_one_batch(model: nn.Module, batch: tuple[Any, Any],
                  loss_fn: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer, *,
                  max_steps: int = MAX_STEPS, target: float | None = None,
                  budget: float | None = None) -> Fit:
    """Train ``model`` on one ``(inputs, targets)`` batch until the loss is below
    ``target`` (default :func:`default_target` of the first loss, judged with
    :data:`TOLERANCE`), for at most ``max_steps`` steps and ``budget`` seconds (on one
    CPU thread for a CPU model)."""
    from torchdoctor.tensors import one_cpu_thread

    with one_cpu_thread(_device_of(model)):
        return _fit(model, batch, loss_fn, optimizer, max_steps, target, budget)


def _fit(model: nn.Module, batch: tuple[Any, Any], loss_fn: Callable[..., torch.Tensor],
         optimizer: torch.optim.Optimizer, max_steps: int, target: float | None,
         budget: float | None) -> Fit:
    from torchdoctor.reference.trainer import train_steps

    started = time.perf_counter()
    losses = train_steps(model, batch, loss_fn, optimizer, 1)
    stop = default_target(losses[0]) if target is None else target
    out_of_time = False
    while len(losses) < max_steps and math.isfinite(losses[-1]) and losses[-1] >= stop:
        steps = min(CHUNK, max_steps - len(losses))
        if budget is not None:
            spent = time.perf_counter() - started
            # chunks sized so that a slow model cannot overrun the budget by much
            steps = min(steps, int((budget - spent) / (spent / len(losses))))
            if steps < 1:
                out_of_time = True
                break
        losses += train_steps(model, batch, loss_fn, optimizer, steps, stop_below=stop)
    return Fit(losses, _eval_loss(model, batch, loss_fn), time.perf_counter() - started,
               out_of_time, stop, TOLERANCE if target is None else 1.0)


def _eval_loss(model: nn.Module, batch: tuple[Any, Any], loss_fn: Any) -> float:
    import torch

    from torchdoctor.reference.trainer import forward
    from torchdoctor.tensors import set_training

    set_training(model, False)  # nn.Module's eval: a user's class may override train()
    try:
        with torch.no_grad():
            return float(loss_fn(forward(model, batch[0]), batch[1]))
    finally:
        set_training(model)


# -- the words of the verdict ----------------------------------------------------------
CANNOT_FIT_HINT = (
    "a model that cannot memorise one batch has a bug: check that the loss gets the raw "
    "model output (no softmax before CrossEntropyLoss) and the matching targets, that "
    "forward uses every layer it should, and try Adam with lr=1e-3")
DIVERGED_HINT = "lower the learning rate (1e-3 for Adam), or clip gradients"
SLOW_HINT = "raise the learning rate, or use Adam 1e-3 (SGD: add momentum=0.9)"


def cannot_fit(subject: str, fit: Fit, batch_size: int | None = None) -> str:
    """``Net cannot fit one batch: loss 2.3 -> 2.1 in 300 steps ..., stuck at 2.2``."""
    return (f"{subject} cannot fit one batch: {fit.describe(batch_size)}, stuck at "
            f"{fit.losses[-1]:.3g} (target {fit.target:.3g})")


#: weight decay x learning rate at or above this pulls the weights to zero faster than one
#: batch's gradient can move them (AdamW: weights x (1 - lr x decay) per step)
HEAVY_DECAY = 0.1
DECAY_HINT = ("use a weight_decay of 1e-4 to 1e-2 (AdamW: 0.01 to 0.1); lr x weight_decay "
              "should stay far below 1")


def heavy_decay(decay: tuple[float, float] | None) -> str:
    """``weight_decay=1000 with lr=0.001 pulls the weights 100% of the way to zero each
    step``, when the decay is that heavy; else ""."""
    if decay is None or decay[0] * decay[1] < HEAVY_DECAY:
        return ""
    weight_decay, lr = decay
    return (f"weight_decay={weight_decay:g} with lr={lr:g} pulls the weights "
            f"{min(weight_decay * lr, 1.0):.0%} of the way to zero each step")


SCRIPT_SETUP_HINT = (
    "check the learning rate (Adam/AdamW: 1e-3; SGD: 0.01-0.1 with momentum=0.9), that the "
    "loss gets the model's raw output and the batch's targets, that zero_grad() and step() "
    "are called on the optimizer of the model you train, and that the optimizer was built "
    "after the model's last layer change")


def does_not_learn(subject: str, fit: Fit, setup: str, classes: int | None,
                   batch_size: int | None = None) -> str:
    """The script's own setup leaves the loss of a repeated batch where it started: at
    chance level (ln(classes) for a classifier) or, for regression, not decreasing."""
    steps = f"{len(fit.losses)} steps on one batch" + (f" of {batch_size}" if batch_size
                                                        else "")
    chance = math.log(classes) if classes and classes > 1 else None
    if chance is not None and abs(fit.initial - chance) <= 0.25 * chance:
        where = f"stays at chance level ({fit.losses[-1]:.3g}; ln({classes}) = {chance:.3g})"
    else:
        where = f"does not decrease ({fit.initial:.3g} -> {fit.losses[-1]:.3g})"
    return f"{subject} does not learn with your setup ({setup}): the loss {where} over {steps}"


def diverged(subject: str, fit: Fit, optimizer: str) -> str | None:
    """The message when the loss blew up while fitting, else None."""
    if fit.finite and fit.losses[-1] <= 1.5 * fit.initial:
        return None
    bad = next((i for i, v in enumerate(fit.losses) if not math.isfinite(v)), None)
    when = f", {fit.losses[bad]} at step {bad}" if bad is not None else ""
    return (f"{subject}: the loss diverges while fitting one batch ({fit.initial:.3g} -> "
            f"{fit.losses[-1]:.3g}{when}) with {optimizer}")


def slowly(subject: str, fit: Fit, optimizer: str, batch_size: int | None = None) -> str:
    """The message for a loss still falling when the steps ran out."""
    return (f"{subject} fits one batch only slowly ({fit.describe(batch_size)}, still "
            f"falling) with {optimizer}")


def _device_of(model: nn.Module) -> str:
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return str(tensor.device) if tensor is not None else "cpu"
