"""Profile the bundled FashionMNIST trainer: :func:`profile_reference`."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from torchdoctor.profiling.base import DEFAULT_TOP, check_count, check_device, is_cuda
from torchdoctor.profiling.loops import cycle
from torchdoctor.profiling.report import ProfileReport
from torchdoctor.profiling.timing import profile_steps

if TYPE_CHECKING:
    from torch import nn


def profile_reference(*, steps: int = 20, batch_size: int = 64,
                      data_root: str | os.PathLike[str] | None = None, device: str = "cpu",
                      num_workers: int = 0, trace: str | None = None, seed: int = 0,
                      top: int = DEFAULT_TOP) -> ProfileReport:
    """Profile ``steps`` training steps of the bundled FashionMNIST trainer (synthetic
    data when FashionMNIST is not under ``data_root``), after one unprofiled warm-up step.

    Global RNG and torch state are restored afterwards; ``seed`` makes the run repeatable.
    """
    import torch
    from torch.utils.data import DataLoader

    from torchdoctor import reference
    from torchdoctor.engine.state import preserved_state
    from torchdoctor.reference import data

    check_count("steps", steps, 1)
    check_count("batch_size", batch_size, 1)
    check_count("num_workers", num_workers, 0)
    check_device(device)
    with preserved_state(seed):
        dataset = data.load_fashion_mnist(train=True, root=data_root)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                            num_workers=num_workers, pin_memory=is_cuda(device),
                            generator=torch.Generator().manual_seed(seed))
        model = reference.FashionMNISTClassifier().to(device)
        report = _profile_training(model, loader, device=device, trace=trace, top=top,
                                   steps=steps)
    report.data = data.dataset_kind(dataset)
    report.kind = "reference"
    return report


def _profile_training(model: nn.Module, loader: Any, *, device: str, trace: str | None,
                      top: int, steps: int) -> ProfileReport:
    """The reference protocol (forward, loss, backward, step) with explicit phases."""
    from torchdoctor import reference

    loss_fn = reference.reference_loss()
    optimizer = reference.reference_optimizer(model.parameters())
    batches = cycle(loader)
    # one unprofiled step first: Adam builds its state, the allocator its caches
    _reference_step(_untimed, device, next(batches), model, loss_fn, optimizer)
    with profile_steps(target="reference trainer", device=device, trace=trace, top=top,
                       loader=loader) as prof:
        for batch in prof.batches(batches, steps):
            _reference_step(prof.phase, device, batch, model, loss_fn, optimizer)
    return prof.report()


def _untimed(_: str) -> AbstractContextManager[None]:
    return nullcontext()


def _reference_step(phase: Callable[[str], AbstractContextManager[None]], device: str,
                    batch: Any, model: nn.Module, loss_fn: Callable[..., Any],
                    optimizer: Any) -> None:
    with phase("data"):  # the host-to-device copy belongs to data loading
        inputs, targets = (t.to(device, non_blocking=True) for t in batch)
    with phase("forward"):
        loss = loss_fn(model(inputs), targets)
    with phase("backward"):
        loss.backward()
    with phase("step"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


__all__ = ["profile_reference"]
