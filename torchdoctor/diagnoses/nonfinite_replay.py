"""Replaying one forward pass with per-module hooks to find where a NaN/inf appeared.

Per-layer hooks on every step would slow training by a third; instead, when a
non-finite loss or gradient is seen, the step's forward is run once more on a deep
copy of the model with a :class:`~torchdoctor.hooks.NonFiniteTracer` attached. The copy
is :func:`~torchdoctor.hooks.copy_without_hooks`'s: a hook set active on the user's model
would otherwise come along and record the replay too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchdoctor.hooks import NonFiniteHit, NonFiniteTracer, copy_without_hooks


def replay_forward(model: nn.Module, args: tuple[Any, ...]) -> NonFiniteHit | None:
    """Run ``model(*args)`` once on a copy (RNG forked, no grad) and return the first
    module whose output was non-finite, or None (also when the replay itself fails:
    a replay is best effort and must not end the diagnosis)."""
    replica = copy_without_hooks(model)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), \
            NonFiniteTracer(replica, gradients=False) as tracer:
        try:
            replica(*args)
        except Exception:
            return None
    return tracer.first_output
