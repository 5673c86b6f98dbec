"""Saving and restoring the process-wide state torchdoctor might disturb.

The doctor runs user code and trains copies of models inside the user's process (the
CLI's, or their pytest run). Whatever it touches of global state (RNGs, grad mode,
default dtype, anomaly mode, deterministic algorithms, global module and optimizer
hooks) is put back exactly as it was by :func:`preserved_state`.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Snapshot:
    python_rng: Any
    numpy_rng: Any
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None
    grad_enabled: bool
    default_dtype: torch.dtype
    anomaly: bool
    anomaly_check_nan: bool
    deterministic: bool
    deterministic_warn_only: bool
    hook_keys: dict[str, set[int]]


def _global_hook_dicts() -> dict[str, dict[int, Any]]:
    """The dictionaries behind torch's global module and optimizer hooks."""
    from torch.nn.modules import module as module_mod
    from torch.optim import optimizer as optimizer_mod

    names = {
        "forward_pre": (module_mod, "_global_forward_pre_hooks"),
        "forward": (module_mod, "_global_forward_hooks"),
        "backward": (module_mod, "_global_backward_hooks"),
        "backward_pre": (module_mod, "_global_backward_pre_hooks"),
        "step_pre": (optimizer_mod, "_global_optimizer_pre_hooks"),
        "step_post": (optimizer_mod, "_global_optimizer_post_hooks"),
    }
    return {key: getattr(mod, attr) for key, (mod, attr) in names.items() if hasattr(mod, attr)}


def _take() -> _Snapshot:
    numpy = sys.modules.get("numpy")
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return _Snapshot(
        python_rng=random.getstate(),
        numpy_rng=numpy.random.get_state() if numpy is not None else None,
        torch_rng=torch.get_rng_state(),
        cuda_rng=cuda_rng,
        grad_enabled=torch.is_grad_enabled(),
        default_dtype=torch.get_default_dtype(),
        anomaly=torch.is_anomaly_enabled(),
        anomaly_check_nan=torch.is_anomaly_check_nan_enabled(),
        deterministic=torch.are_deterministic_algorithms_enabled(),
        deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        hook_keys={k: set(d) for k, d in _global_hook_dicts().items()},
    )


def _restore(snap: _Snapshot) -> list[str]:
    """Put everything back; return the names of global hooks that had to be removed."""
    random.setstate(snap.python_rng)
    numpy = sys.modules.get("numpy")
    if numpy is not None and snap.numpy_rng is not None:
        numpy.random.set_state(snap.numpy_rng)
    torch.set_rng_state(snap.torch_rng)
    if snap.cuda_rng is not None:
        torch.cuda.set_rng_state_all(snap.cuda_rng)
    torch.set_grad_enabled(snap.grad_enabled)
    torch.set_default_dtype(snap.default_dtype)
    torch.autograd.set_detect_anomaly(snap.anomaly, snap.anomaly_check_nan)
    torch.use_deterministic_algorithms(snap.deterministic,
                                       warn_only=snap.deterministic_warn_only)
    return _remove_new_hooks(snap.hook_keys)


def _remove_new_hooks(before: dict[str, set[int]]) -> list[str]:
    leaked = []
    for kind, hooks in _global_hook_dicts().items():
        for key in set(hooks) - before.get(kind, set()):
            leaked.append(f"{kind}:{getattr(hooks[key], '__qualname__', hooks[key])}")
            del hooks[key]
    return leaked


@contextmanager
def preserved_state(seed: int | None = None) -> Iterator[list[str]]:
    """Restore RNGs, grad mode, default dtype, anomaly mode, deterministic mode and
    global hooks on exit. With ``seed``, seed torch, random (and numpy) on entry so the
    work inside is reproducible. Yields a list that, after exit, names any global hook
    left installed inside (and removed here): a non-empty list is a bug to report."""
    snap = _take()
    leaked: list[str] = []
    if seed is not None:
        seed_everything(seed)
    try:
        yield leaked
    finally:
        leaked.extend(_restore(snap))


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), random and, if imported, numpy."""
    random.seed(seed)
    torch.manual_seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
