"""The patches the setup recorder needs for one script run: optimizer and LR scheduler
construction (where the optimizer was built, which scheduler drives it),
``GradScaler.scale`` and the gradient clipping functions (their max). Each wrapper
calls the original first and reaches the run only through its
:class:`~torchdoctor.scriptrun.patches.RunLink`, so it is inert once the run is over."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchdoctor.scriptrun.patches import PatchSet, RunLink


def install_setup_patches(patches: PatchSet, link: RunLink[Any]) -> None:
    """Patch what :class:`~torchdoctor.scriptrun.setups.SetupRecorder` is told about
    (``link.get().setups`` while the run lasts)."""
    from torch.optim import lr_scheduler

    def recorder() -> Any:
        run = link.get()
        return run.setups if run is not None else None

    patches.patch(torch.optim.Optimizer, "__init__", _after(
        torch.optim.Optimizer.__init__, lambda rec, opt, *a, **k: rec.built(opt), recorder))
    for cls in (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau):
        patches.patch(cls, "__init__", _after(
            vars(cls)["__init__"], lambda rec, sched, *a, **k: rec.scheduler(sched),
            recorder))
    patches.patch(torch.amp.GradScaler, "scale", _after(
        torch.amp.GradScaler.scale, lambda rec, *a, **k: rec.scaled(), recorder))
    for kind, name, key in (("norm", "clip_grad_norm_", "max_norm"),
                            ("value", "clip_grad_value_", "clip_value")):
        patches.patch(nn.utils, name, _after(
            getattr(nn.utils, name), functools.partial(_clip_seen, kind=kind, key=key),
            recorder))


def _clip_seen(recorder: Any, *args: Any, kind: str, key: str, **kwargs: Any) -> None:
    limit = args[1] if len(args) > 1 else kwargs.get(key)
    if isinstance(limit, (int, float)):
        recorder.clipped(kind, float(limit))


def _after(original: Callable[..., Any], note: Callable[..., None],
           recorder: Callable[[], Any]) -> Callable[..., Any]:
    """``original``, then ``note(recorder, *args)`` while the run lasts."""

    @functools.wraps(original)
    def observed(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        found = recorder()
        if found is not None:
            note(found, *args, **kwargs)
        return result

    return observed
