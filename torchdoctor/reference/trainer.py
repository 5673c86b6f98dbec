"""The reference FashionMNIST classifier and its healthy training protocol.

This is the baseline the checks measure against (see DEVELOPERS.md): the MLP of the
PyTorch basics tutorial, CrossEntropyLoss on logits, Adam 1e-3, and the loop

    model.train(); for each batch: zero_grad -> forward -> loss -> backward -> step
    model.eval() + torch.no_grad() to evaluate; state_dict checkpoints loaded with
    torch.load(..., weights_only=True).

``torchdoctor reference`` runs it end to end (:mod:`torchdoctor.reference_cli`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchdoctor.reference.data import reference_batch
from torchdoctor.tensors import forward as forward
from torchdoctor.tensors import set_training, to_device

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from torchdoctor.engine.context import CheckOptions, TrainingSetup

#: progress callback of :func:`train_epoch`: (batches done, batches in total, last loss)
Progress = Callable[[int, int, float], None]
REFERENCE_BATCH_SIZE = 64
REFERENCE_LR = 1e-3
NUM_CLASSES = 10


class FashionMNISTClassifier(nn.Module):
    """The PyTorch basics tutorial's MLP: 784 -> 256 -> 256 -> 10 logits, with dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 256),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(256, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 10) for images (B, 1, 28, 28)."""
        return self.linear_relu_stack(self.flatten(x))


def reference_loss() -> nn.CrossEntropyLoss:
    """CrossEntropyLoss: it takes raw logits (it applies log-softmax itself)."""
    return nn.CrossEntropyLoss()


def reference_optimizer(params: Iterable[Any], lr: float = REFERENCE_LR) -> torch.optim.Adam:
    """Adam with the tutorial's learning rate."""
    return torch.optim.Adam(params, lr=lr)


def expected_initial_loss(num_classes: int = NUM_CLASSES) -> float:
    """Cross-entropy of an untrained classifier guessing uniformly: ln(num_classes)."""
    return math.log(num_classes)


def _step(model: nn.Module, inputs: Any, targets: Any, loss_fn: Callable[..., torch.Tensor],
          optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One healthy step; returns the (detached) loss before the update."""
    optimizer.zero_grad()
    loss = loss_fn(forward(model, inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_steps(model: nn.Module, batch: tuple[Any, Any],
                loss_fn: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer,
                steps: int, *, stop_below: float | None = None) -> list[float]:
    """Train ``model`` (in training mode) on one fixed ``(inputs, targets)`` batch.

    Returns the loss of each step, measured before its update. Stops early once a loss
    is below ``stop_below``, or is NaN/inf (further steps would only repeat it).
    """
    set_training(model)
    inputs, targets = batch
    losses: list[float] = []
    for _ in range(steps):
        value = float(_step(model, inputs, targets, loss_fn, optimizer))
        losses.append(value)
        if not math.isfinite(value) or (stop_below is not None and value < stop_below):
            break
    return losses


def _batch_count(loader: Iterable[Any], limit_batches: int | None) -> int:
    """Batches one pass will take: len(loader), capped at ``limit_batches``."""
    total = len(loader) if isinstance(loader, Sized) else 0
    if limit_batches is not None:
        total = min(total, limit_batches) if total else limit_batches
    return total


def train_epoch(model: nn.Module, loader: Iterable[Any], loss_fn: Callable[..., torch.Tensor],
                optimizer: torch.optim.Optimizer, *, device: str | torch.device = "cpu",
                limit_batches: int | None = None, progress: Progress | None = None) -> float:
    """One training pass over ``loader`` (at most ``limit_batches`` batches) in training
    mode; returns the mean batch loss."""
    set_training(model)
    total = _batch_count(loader, limit_batches)
    running = 0.0
    done = 0
    for inputs, targets in loader:
        if limit_batches is not None and done >= limit_batches:
            break
        loss = _step(model, to_device(inputs, device), to_device(targets, device), loss_fn,
                     optimizer)
        running += float(loss)
        done += 1
        if progress is not None:
            progress(done, total, float(loss))
    return running / max(done, 1)


def evaluate(model: nn.Module, loader: Iterable[Any], loss_fn: Callable[..., torch.Tensor],
             *, device: str | torch.device = "cpu",
             limit_batches: int | None = None) -> tuple[float, float]:
    """``(mean loss per sample, accuracy)`` in eval mode without autograd; the model's
    previous training flag is restored afterwards."""
    was_training = model.training
    set_training(model, False)  # dropout off: evaluation must be deterministic
    try:
        with torch.no_grad():  # no graph: less memory, faster, no accidental training
            return _evaluate(model, loader, loss_fn, device, limit_batches)
    finally:
        model.train(was_training)


def _evaluate(model: nn.Module, loader: Iterable[Any], loss_fn: Callable[..., torch.Tensor],
              device: str | torch.device, limit_batches: int | None) -> tuple[float, float]:
    loss_sum, correct, seen = 0.0, 0, 0
    for done, (inputs, targets) in enumerate(loader):
        if limit_batches is not None and done >= limit_batches:
            break
        inputs, targets = to_device(inputs, device), to_device(targets, device)
        output = forward(model, inputs)
        count = len(targets)
        loss_sum += float(loss_fn(output, targets)) * count
        correct += int((output.argmax(dim=1) == targets).sum())
        seen += count
    return loss_sum / max(seen, 1), correct / max(seen, 1)


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch of :func:`fit` measured."""

    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float

    def row(self) -> list[str]:
        """The record as a table row."""
        return [str(self.epoch), f"{self.train_loss:.4f}", f"{self.test_loss:.4f}",
                f"{100 * self.test_accuracy:.1f}%", f"{self.seconds:.1f}"]


EPOCH_HEADERS = ("epoch", "train loss", "test loss", "test accuracy", "seconds")


def fit(model: nn.Module, train_loader: DataLoader[Any], test_loader: DataLoader[Any],
        loss_fn: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer, *,
        epochs: int, device: str | torch.device = "cpu", limit_batches: int | None = None,
        progress: Callable[[int, int, int, float], None] | None = None) -> list[EpochRecord]:
    """Train ``epochs`` epochs, evaluating after each; ``progress`` gets
    (epoch, batches done, batches in total, loss)."""
    records = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        report = None if progress is None else _bind_epoch(progress, epoch)
        train_loss = train_epoch(model, train_loader, loss_fn, optimizer, device=device,
                                 limit_batches=limit_batches, progress=report)
        test_loss, accuracy = evaluate(model, test_loader, loss_fn, device=device,
                                       limit_batches=limit_batches)
        records.append(EpochRecord(epoch, train_loss, test_loss, accuracy,
                                   time.perf_counter() - started))
    return records


def _bind_epoch(progress: Callable[[int, int, int, float], None], epoch: int) -> Progress:
    return lambda done, total, loss: progress(epoch, done, total, loss)


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Save ``model.state_dict()`` (weights only, no pickled code) to ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), target)
    return target


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict saved by :func:`save_checkpoint` into ``model`` and return it.

    ``weights_only=True`` refuses to unpickle arbitrary objects, so a checkpoint from
    elsewhere cannot run code.
    """
    first = next(model.parameters(), None)
    location = first.device if first is not None else torch.device("cpu")
    state = torch.load(Path(path), map_location=location, weights_only=True)
    model.load_state_dict(state)
    return model


def reference_setup(options: CheckOptions) -> TrainingSetup:
    """The checks' default training setup: a FashionMNIST batch of 64 (seeded by
    ``options.seed``, from ``options.data_root``), CrossEntropyLoss and Adam 1e-3."""
    from torchdoctor.engine.context import TrainingSetup

    inputs, targets, kind = reference_batch(REFERENCE_BATCH_SIZE, root=options.data_root,
                                            seed=options.seed)
    return TrainingSetup(
        make_batch=lambda: (inputs.clone(), targets.clone()),
        make_loss=reference_loss,
        make_optimizer=reference_optimizer,
        data=kind,
        source={"batch": "reference", "loss": "reference", "optimizer": "reference"},
    )
