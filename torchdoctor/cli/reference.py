"""``torchdoctor reference``: train the reference FashionMNIST classifier end to end,
with a progress line and a per-epoch table (the CLI body; the protocol itself lives in
:mod:`torchdoctor.reference`)."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
from torch import nn

from torchdoctor.reference.data import SYNTHETIC, data_root, load_fashion_mnist
from torchdoctor.reference.trainer import (
    EPOCH_HEADERS,
    REFERENCE_BATCH_SIZE,
    REFERENCE_LR,
    EpochRecord,
    FashionMNISTClassifier,
    fit,
    load_checkpoint,
    reference_loss,
    reference_optimizer,
    save_checkpoint,
)

if TYPE_CHECKING:
    from torch.utils.data import DataLoader


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

    from torchdoctor.reference.data import dataset_kind

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
    from torchdoctor.engine.state import preserved_state

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
