"""``assert_no_grad_leak``: gradients carried over between optimizer steps by the
user's own step function (a missing or misplaced ``optimizer.zero_grad()``).

Detection and words are those of ``torchdoctor check`` and ``watch()``
(:mod:`torchdoctor.diagnoses.zero_grad`): the findings have the id
``missing-zero-grad`` and point at the ``optimizer.step()`` line of ``train_step``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchdoctor.diagnoses import zero_grad
from torchdoctor.engine.state import preserved_state
from torchdoctor.testing.errors import fail
from torchdoctor.testing.trial import OptimizerSpec, batch_for, make_trial, sgd

if TYPE_CHECKING:
    from torchdoctor.scriptrun.observations import CarriedGradRecord


def assert_no_grad_leak(model: nn.Module, train_step: Callable[..., Any], batch: Any,
                        optimizer: OptimizerSpec = None, *, steps: int = 3,
                        seed: int | None = 0) -> None:
    """Fail when ``train_step`` lets gradients carry over from one optimizer step into
    the next (a missing or misplaced ``optimizer.zero_grad()``).

    ``train_step(model, optimizer, batch)`` is your own step function (forward, loss,
    backward, step). It is called ``steps`` times on a deep copy of ``model`` with an
    optimizer over the copy: ``optimizer`` given as an instance is copied with the
    model; a factory is called with the copy's parameters; None means SGD (lr 0.01).
    Gradient accumulation (several backward passes per step, zeroed after the step)
    passes. The step function must call ``optimizer.step()`` on the optimizer it gets.
    """
    __tracebackhide__ = True
    with preserved_state(seed):
        trial, opt = make_trial(model, optimizer, sgd)
        stepped, records = _watched_steps(trial, opt, train_step, batch_for(trial, batch),
                                          steps)
    if not stepped:
        fail("train_step(model, optimizer, batch) never called optimizer.step() on the "
             "optimizer it was given, so no gradient leak can be judged")
    findings = [zero_grad.carried_grad_finding(record)
                for record in zero_grad.first_per_optimizer(records)]
    if findings:
        fail(f"gradients carried over between optimizer steps in {steps} calls of "
             f"{getattr(train_step, '__name__', 'train_step')}", findings)


def _watched_steps(trial: nn.Module, opt: torch.optim.Optimizer,
                   train_step: Callable[..., Any], batch: Any,
                   steps: int) -> tuple[bool, list[CarriedGradRecord]]:
    """Call ``train_step`` ``steps`` times under a gradient-carry detector; (whether
    ``opt.step()`` ran, the detector's records). Its hooks are removed before returning."""
    __tracebackhide__ = True  # an exception of train_step shows the user's frames only
    from torchdoctor.diagnoses.gradcarry import GradCarryDetector
    from torchdoctor.scriptrun.callsite import user_callsite

    names = {id(p): n for n, p in trial.named_parameters()}
    detector = GradCarryDetector(name_of=lambda p: names.get(id(p), "parameter"))
    detector.watch(opt)
    stepped: list[int] = []

    def after_step(stepped_optimizer: Any, _args: Any, _kwargs: Any) -> None:
        stepped.append(1)
        detector.note_step(stepped_optimizer, user_callsite())  # the step() line

    handle = opt.register_step_post_hook(after_step)
    try:
        for _ in range(steps):
            train_step(trial, opt, batch)
    finally:
        handle.remove()
        detector.close()
    return bool(stepped), detector.records
