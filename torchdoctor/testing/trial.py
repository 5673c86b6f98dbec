"""Batches, losses and the copies the helpers train: the user's model and optimizer
are deep-copied, never touched."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchdoctor.tensors import iter_tensors, to_device

LossFn = Callable[..., torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
#: an optimizer to copy along with the model, a factory called with the copy's
#: parameters, or None for the helper's default
OptimizerSpec = torch.optim.Optimizer | OptimizerFactory | None


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` for a 2-item tuple or list; ``(batch, None)`` otherwise."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def default_loss(output: Any, targets: Any) -> torch.Tensor:
    """Cross-entropy for integer targets, MSE for float targets, and the mean square of
    the output when there are no targets (enough to send a gradient everywhere)."""
    prediction = next(iter_tensors(output))
    if targets is None:
        return prediction.float().square().mean()
    if not targets.is_floating_point():
        return F.cross_entropy(prediction, targets)
    return F.mse_loss(prediction, targets)


def compute_loss(output: Any, targets: Any, loss_fn: LossFn | None) -> torch.Tensor:
    """``loss_fn(output, targets)`` (``loss_fn(output)`` without targets), or the
    default loss when ``loss_fn`` is None."""
    if loss_fn is None:
        return default_loss(output, targets)
    return loss_fn(output, targets) if targets is not None else loss_fn(output)


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (cpu when it has none)."""
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def batch_for(model: nn.Module, batch: Any) -> Any:
    """``batch`` moved to the device of ``model``."""
    return to_device(batch, device_of(model))


def make_trial(model: nn.Module, optimizer: OptimizerSpec,
               default: OptimizerFactory) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A deep copy of the model in training mode and an optimizer over the copy.

    A given optimizer instance is deep-copied *together with* the model, so the copy's
    parameter groups (and any state) refer to the copied parameters."""
    if isinstance(optimizer, torch.optim.Optimizer):
        trial, trial_optimizer = copy.deepcopy((model, optimizer))
    else:
        trial = copy.deepcopy(model)
        trial_optimizer = (optimizer or default)(trial.parameters())
    trial.train()
    return trial, trial_optimizer


def adam(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The default optimizer of the learning helpers: Adam, lr 1e-3."""
    return torch.optim.Adam(params, lr=1e-3)


def sgd(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The default optimizer of :func:`assert_no_grad_leak`: SGD, lr 1e-2."""
    return torch.optim.SGD(params, lr=1e-2)
