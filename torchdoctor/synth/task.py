"""A learnable synthetic task for a model's output: targets derived from the inputs by
fixed functions (so one batch can be fitted, and overfit-one-batch means something) and
the loss that matches the output.

* ``(B, C)`` scores, ``C >= 2``: cross-entropy (NLLLoss when the output is already
  log-probabilities); the class of a sample is the argmax of a fixed random projection
  of its (centred) input.
* ``(B, T, V)`` per-position scores over an input of ``(B, T)`` token ids or
  ``(B, T, F)`` features: cross-entropy per position; the class is a fixed function
  of that position's own token (learnable by a causal model too).
* ``(B,)`` / ``(B, 1)`` / ``(B, k)``: regression (MSE) to a standardised projection.
* output shaped like the input: reconstruction (MSE to the input).
* anything else: MSE to fixed targets of the output's shape.

Tuple, dict and dataclass outputs (HF-style ``.logits``) are reduced to their main tensor
by :func:`main_output`; the loss module then wraps the plain loss.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: the weight of an auxiliary head's loss (torchvision's Inception recipe)
AUX_WEIGHT = 0.4
#: keys/attributes that name a model's main output, most specific first
OUTPUT_NAMES = ("logits", "logit", "scores", "out", "output", "outputs", "prediction", "y")


@dataclass
class Task:
    """Targets for one batch, the loss to train with, and a phrase for the report."""

    targets: torch.Tensor
    make_loss: Callable[[], nn.Module]
    description: str


def main_output(output: Any) -> torch.Tensor | None:
    """The tensor a loss should be computed on: the output itself, its ``logits`` (or
    similar) entry or attribute, else its first floating-point tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        named = [output.get(k) for k in OUTPUT_NAMES]
        values = [*named, *output.values()]
    elif isinstance(output, (tuple, list)):
        values = list(output)
    elif dataclasses.is_dataclass(output) or hasattr(output, "logits"):
        values = [getattr(output, k, None) for k in OUTPUT_NAMES] + list(vars(output).values())
    else:
        return None
    for value in values:
        found = main_output(value) if not isinstance(value, torch.Tensor) else value
        if found is not None and found.is_floating_point():
            return found
    return None


class SyntheticLoss(nn.Module):
    """The synthetic task's loss on a structured output (or on per-position scores):
    ``kind`` is "cross_entropy" (class dim last when ``classes_last``), "nll" or "mse"."""

    def __init__(self, kind: str, *, classes_last: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.classes_last = classes_last

    def forward(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        """The loss of ``output``'s main tensor against ``targets``, plus
        :data:`AUX_WEIGHT` times that of each other output of the same shape (auxiliary
        heads, as GoogLeNet's and Inception's: trained as their recipes do)."""
        from torchdoctor.tensors import iter_tensors

        prediction = main_output(output)
        if prediction is None:
            raise TypeError(f"the model returned {type(output).__name__} without a tensor")
        loss = self._one(prediction, targets)
        for other in iter_tensors(output):
            if other is not prediction and other.shape == prediction.shape and \
                    other.is_floating_point():
                loss = loss + AUX_WEIGHT * self._one(other, targets)
        return loss

    def _one(self, prediction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.kind == "mse":
            return F.mse_loss(prediction, targets)
        if self.classes_last:
            prediction = prediction.reshape(-1, prediction.shape[-1])
            targets = targets.reshape(-1)
        if self.kind == "nll":
            return F.nll_loss(prediction, targets)
        return F.cross_entropy(prediction, targets)


def make_task(inputs: Any, output: Any, seed: int) -> Task:
    """The synthetic task for a model that maps ``inputs`` to ``output``."""
    prediction = main_output(output)
    if prediction is None:
        raise TypeError(f"the model returned {type(output).__name__} without a "
                        "floating-point tensor")
    plain = isinstance(output, torch.Tensor)
    generator = torch.Generator().manual_seed(seed + 1)
    first = inputs[0] if isinstance(inputs, tuple) else inputs
    shape = tuple(prediction.shape)
    if isinstance(first, torch.Tensor) and first.is_floating_point() and \
            tuple(first.shape) == shape:
        return Task(first.detach().clone(), _loss("mse", plain), "reconstruction (MSE)")
    if prediction.dim() == 2 and shape[1] >= 2:
        return _classes(first, prediction, plain, generator)
    if prediction.dim() >= 3 and isinstance(first, torch.Tensor) and \
            tuple(first.shape[:prediction.dim() - 1]) == shape[:-1] and shape[-1] >= 2:
        return _per_position(first, shape, generator)
    if prediction.dim() <= 2:
        targets = _regression(first, shape, generator).to(prediction.dtype)
        return Task(targets, _loss("mse", plain), f"regression of {_count(shape)} (MSE)")
    targets = torch.randn(shape, generator=generator, dtype=prediction.dtype) * 0.5
    return Task(targets, _loss("mse", plain), f"fixed {'x'.join(map(str, shape[1:]))} "
                                               "targets (MSE)")


def _loss(kind: str, plain: bool) -> Callable[[], nn.Module]:
    if not plain:
        return lambda: SyntheticLoss(kind)
    plain_losses: dict[str, Callable[[], nn.Module]] = {
        "mse": nn.MSELoss, "nll": nn.NLLLoss, "cross_entropy": nn.CrossEntropyLoss}
    return plain_losses[kind]


def _classes(first: Any, prediction: torch.Tensor, plain: bool,
             generator: torch.Generator) -> Task:
    """Per-sample classes: argmax of a fixed projection of the sample's features."""
    batch, classes = int(prediction.shape[0]), int(prediction.shape[1])
    features = _features(first, batch, generator)
    if features is None:
        labels = torch.randint(0, classes, (batch,), generator=generator)
    else:
        labels = (features @ torch.randn(features.shape[1], classes,
                                         generator=generator)).argmax(dim=1)
    kind = "nll" if _log_probabilities(prediction) else "cross_entropy"
    name = "NLLLoss" if kind == "nll" else "cross-entropy"
    return Task(labels, _loss(kind, plain), f"{classes} classes ({name})")


def _per_position(first: torch.Tensor, shape: tuple[int, ...],
                  generator: torch.Generator) -> Task:
    """A class per position: a fixed function of that position's token or features."""
    classes = shape[-1]
    if not first.is_floating_point():
        labels = (first.long() * 7 + 3) % classes
    else:
        projection = torch.randn(first.shape[-1], classes, generator=generator,
                                 dtype=first.dtype)
        centred = first - first.mean(dim=tuple(range(first.dim() - 1)), keepdim=True)
        labels = (centred @ projection).argmax(dim=-1)
    return Task(labels.reshape(shape[:-1]), lambda: SyntheticLoss("cross_entropy",
                                                                  classes_last=True),
                f"{classes} classes per position (cross-entropy)")


def _regression(first: Any, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Standardised fixed projections of each sample's features, shaped like the output."""
    batch = shape[0]
    outputs = math.prod(shape[1:])
    features = _features(first, batch, generator)
    if features is None or batch < 2:
        return torch.randn(shape, generator=generator) * 0.5
    values = features @ torch.randn(features.shape[1], outputs, generator=generator)
    values = (values - values.mean(dim=0)) / values.std(dim=0).clamp_min(1e-6)
    return values.reshape(shape)


def _features(first: Any, batch: int, generator: torch.Generator) -> torch.Tensor | None:
    """Each sample's input as a centred float row ``(batch, D)``; token ids become fixed
    random values; None when no input axis has the batch size."""
    if not isinstance(first, torch.Tensor) or first.dim() == 0:
        return None
    axis = next((a for a in range(first.dim()) if first.shape[a] == batch), None)
    if axis is None:
        return None
    values = first.detach().movedim(axis, 0).reshape(batch, -1)
    if not values.is_floating_point():
        table = torch.randn(int(values.max()) + 1, generator=generator)
        values = table[values.long()]
    values = values.float()
    return values - values.mean(dim=0, keepdim=True)


def _log_probabilities(prediction: torch.Tensor) -> bool:
    """Whether each row is already log-probabilities (a final log_softmax)."""
    with torch.no_grad():
        sums = torch.logsumexp(prediction.float(), dim=1)
        return bool((prediction <= 0).all()) and bool(sums.abs().max() < 1e-3)


def _count(shape: tuple[int, ...]) -> str:
    outputs = math.prod(shape[1:])
    return "1 output" if outputs == 1 else f"{outputs} outputs"
