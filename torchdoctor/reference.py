"""The reference FashionMNIST classifier and its healthy training protocol.

This is the baseline the checks measure against (see DEVELOPERS.md): the MLP of the
PyTorch basics tutorial, CrossEntropyLoss on logits, Adam 1e-3, and the loop

    model.train(); for each batch: zero_grad -> forward -> loss -> backward -> step
    model.eval() + torch.no_grad() to evaluate; state_dict checkpoints loaded with
    torch.load(..., weights_only=True).

``torchdoctor reference`` runs it end to end (:func:`run_reference_cli`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
from torch import nn

from torchdoctor.data import SYNTHETIC, data_root, load_fashion_mnist, reference_batch
from torchdoctor.tensors import to_device

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from torchdoctor.context import CheckOptions, TrainingSetup

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


def forward(model: nn.Module, inputs: Any) -> Any:
    """``model(*inputs)`` for a tuple of inputs, else ``model(inputs)``."""
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


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
    model.train()
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
    model.train()
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
    model.eval()  # dropout off: evaluation must be deterministic
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
    from torchdoctor.context import TrainingSetup

    inputs, targets, kind = reference_batch(REFERENCE_BATCH_SIZE, root=options.data_root,
                                            seed=options.seed)
    return TrainingSetup(
        make_batch=lambda: (inputs.clone(), targets.clone()),
        make_loss=reference_loss,
        make_optimizer=reference_optimizer,
        data=kind,
        source={"batch": "reference", "loss": "reference", "optimizer": "reference"},
    )


# ---------------------------------------------------------------- torchdoctor reference


class _ProgressLine:
    """A carriage-return progress line on a terminal, redrawn at most 10 times a second."""

    def __init__(self, stream: TextIO, epochs: int) -> None:
        self.stream = stream
        self.epochs = epochs
        self.last = 0.0

    def __call__(self, epoch: int, done: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and done != total:
            return
        self.last = now
        self.stream.write(f"\repoch {epoch}/{self.epochs}  batch {done}/{total}  "
                          f"loss {loss:.4f} ")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the line so the table starts on a clean one."""
        self.stream.write("\r\033[K")
        self.stream.flush()


def _fail(message: str) -> int:
    print(f"torchdoctor reference: error: {message}", file=sys.stderr)
    return 2


def _device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used, or None."""
    try:
        if torch.device(device).type == "meta":  # runs, but has no values to report
            raise ValueError("the meta device holds no data to train on")
        torch.empty(0, device=torch.device(device))
    except Exception as exc:  # torch raises RuntimeError, ValueError or AssertionError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"unknown or unavailable device {device!r} ({first}); try --device cpu"
    return None


def _input_problem(epochs: int, data: str | None, batch_size: int, lr: float, fmt: str,
                   limit_batches: int | None, device: str) -> str | None:
    """The first thing wrong with the command's input, or None."""
    from torchdoctor.report import FORMATS

    if epochs < 1:
        return f"--epochs must be at least 1 (got {epochs})"
    if batch_size < 1:
        return f"--batch-size must be at least 1 (got {batch_size})"
    if not (lr > 0 and math.isfinite(lr)):
        return f"--lr must be a positive number (got {lr})"
    if limit_batches is not None and limit_batches < 1:
        return f"--limit-batches must be at least 1 (got {limit_batches})"
    if fmt not in FORMATS:
        return f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}"
    if data is not None and not Path(data).is_dir():
        return (f"data directory {data!r} does not exist; pass a folder holding "
                "FashionMNIST/raw (or an empty one to download into), or omit --data")
    return _device_problem(device)


def _loaders(data: str | None, batch_size: int,
             seed: int) -> tuple[DataLoader[Any], DataLoader[Any], str]:
    from torch.utils.data import DataLoader

    from torchdoctor.data import dataset_kind

    train_set = load_fashion_mnist(train=True, root=data)
    test_set = load_fashion_mnist(train=False, root=data)
    shuffle = torch.Generator().manual_seed(seed)  # a private RNG: reproducible order
    train = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=shuffle)
    test = DataLoader(test_set, batch_size=batch_size)
    return train, test, dataset_kind(train_set)


def _say(message: str, fmt: str) -> None:
    """Human notes go to stdout, except in JSON mode where stdout is the JSON only."""
    print(message, file=sys.stderr if fmt == "json" else sys.stdout)


def _round_trip(model: nn.Module, path: str, fmt: str) -> int:
    """Save a checkpoint, reload it into a new model with weights_only=True, compare."""
    try:
        saved = save_checkpoint(model, path)
        fresh = load_checkpoint(FashionMNISTClassifier().to(_device_of(model)), saved)
    except (OSError, RuntimeError) as exc:
        return _fail(f"could not save/reload checkpoint {path!r}: {exc}")
    before, after = model.state_dict(), fresh.state_dict()
    same = all(torch.equal(before[k], after[k]) for k in before)
    if not same:
        return _fail(f"checkpoint {path!r} did not round-trip: weights differ after reload")
    _say(f"checkpoint: saved {saved} and reloaded it with torch.load(weights_only=True): "
         f"{len(after)} tensors identical", fmt)
    return 0


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def run_reference_cli(*, epochs: int, data: str | None, batch_size: int = REFERENCE_BATCH_SIZE,
                      lr: float = REFERENCE_LR, seed: int = 0, device: str = "cpu",
                      quiet: bool = False, fmt: str = "table", limit_batches: int | None = None,
                      checkpoint: str | None = None) -> int:
    """``torchdoctor reference``: train the reference classifier, print a per-epoch
    table (or JSON list), optionally round-trip a checkpoint. Returns the exit code:
    0, or 2 with one message on stderr for bad input."""
    problem = _input_problem(epochs, data, batch_size, lr, fmt, limit_batches, device)
    if problem is not None:
        return _fail(problem)
    from torchdoctor.state import preserved_state

    with preserved_state():  # seeding and model init must not leak into a caller's process
        torch.manual_seed(seed)
        train, test, kind = _loaders(data, batch_size, seed)
        _announce(kind, data, epochs, batch_size, lr, device, fmt)
        model = FashionMNISTClassifier().to(device)
        records = _fit_with_progress(model, train, test, epochs, lr, device, quiet,
                                     limit_batches)
        _print_records(records, kind, fmt)
        return _round_trip(model, checkpoint, fmt) if checkpoint else 0


def _announce(kind: str, data: str | None, epochs: int, batch_size: int, lr: float,
              device: str, fmt: str) -> None:
    where = data_root(data).resolve()
    _say(f"FashionMNISTClassifier: {epochs} epoch(s), batch {batch_size}, Adam lr {lr:g}, "
         f"CrossEntropyLoss, device {device}, data {kind} ({where})", fmt)
    if kind == SYNTHETIC:
        print("torchdoctor reference: training on SYNTHETIC data (no FashionMNIST found): "
              "the accuracy below says the protocol works, not how well FashionMNIST is "
              "learnt.", file=sys.stderr)


def _fit_with_progress(model: nn.Module, train: DataLoader[Any], test: DataLoader[Any],
                       epochs: int, lr: float, device: str, quiet: bool,
                       limit_batches: int | None) -> list[EpochRecord]:
    show = not quiet and sys.stderr.isatty()
    line = _ProgressLine(sys.stderr, epochs) if show else None
    try:
        return fit(model, train, test, reference_loss(),
                   reference_optimizer(model.parameters(), lr=lr), epochs=epochs,
                   device=device, limit_batches=limit_batches, progress=line)
    finally:
        if line is not None:
            line.clear()


def _print_records(records: list[EpochRecord], kind: str, fmt: str) -> None:
    from torchdoctor.report import table

    if fmt == "json":
        print(json.dumps([{**asdict(r), "data": kind} for r in records], indent=2))
    else:
        print(table([r.row() for r in records], EPOCH_HEADERS, fmt))
