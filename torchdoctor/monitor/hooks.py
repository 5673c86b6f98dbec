"""The hooks :class:`~torchdoctor.monitors.Watch` installs, and its torch.distributed glue.

The hooks are closures over a *weak* reference to the watch: a deep copy of the model or
optimizer (which copies their hooks) neither keeps the watch alive nor reports to it,
because each hook also checks that it was called for the watched object itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn


class _Watched(Protocol):
    model: nn.Module
    optimizer: torch.optim.Optimizer

    @property
    def active(self) -> bool: ...

    def _on_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None: ...

    def _before_step(self, snapshot: bool) -> None: ...

    def _after_step(self) -> None: ...


def forward_hook(ref: weakref.ref[Any]) -> Callable[..., None]:
    """A forward pre-hook (``with_kwargs=True``) reporting the model's forwards."""
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        doc: _Watched | None = ref()
        if doc is not None and doc.active and module is doc.model:
            doc._on_forward(args, kwargs)
    return hook


def step_hook(ref: weakref.ref[Any], before: bool) -> Callable[..., None]:
    """An optimizer step pre-hook (``before``) or post-hook reporting the steps."""
    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        doc: _Watched | None = ref()
        if doc is None or not doc.active or optimizer is not doc.optimizer:
            return
        if before:
            doc._before_step(snapshot=True)
        else:
            doc._after_step()
    return hook


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    if isinstance(model, (DataParallel, DistributedDataParallel)):
        return model.module
    return model


def is_distributed() -> bool:
    """Whether torch.distributed runs with more than one rank."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(packed: torch.Tensor) -> int:
    """Sum ``packed`` over the ranks (in place); return the world size."""
    torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.SUM)
    return torch.distributed.get_world_size()


def number(value: Any) -> float | None:
    """``float(value)``, or None when it is not a number (an lr may be a tensor)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
