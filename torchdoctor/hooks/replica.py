"""Copies for replays: a model without torchdoctor's hooks, detached inputs, and the CUDA
devices whose RNG a replay forks.

A replay runs the user's step once more on copies so that nothing of the user's changes:
not the model, not the batch, not the RNG stream.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchdoctor.tensors import deepcopy_module

#: the package whose hook functions :func:`copy_without_hooks` removes
_PACKAGE = __name__.rpartition(".")[0]

#: hook dictionaries keyed like ``_forward_hooks``: flags of kwargs/always-called hooks
_EXTRA_HOOK_DICTS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                     "_forward_pre_hooks_with_kwargs")


def copy_without_hooks(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (non-leaf tensor attributes copied detached) without the
    module hooks of any torchdoctor hook set.

    A deep copy made while a hook set is active carries that set's module hooks (the
    functions are shared, not copied): they are dropped so that a replay does not feed
    the user's own tracers. Other hooks (weight_norm's...) stay."""
    replica = deepcopy_module(model)
    for module in replica.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, fn in hooks.items() if _is_own_hook(fn)]:
                del hooks[key]
                for extra in _EXTRA_HOOK_DICTS:
                    getattr(module, extra).pop(key, None)
    return replica


def _is_own_hook(fn: Any) -> bool:
    # the hook sets' hooks are functions and bound methods defined in this package
    owner = getattr(fn, "__module__", None) or ""
    return owner == _PACKAGE or owner.startswith(f"{_PACKAGE}.")


def clone_tensors(value: Any) -> Any:
    """Detached copies of the tensors in a nested value (so in-place ops in the
    replayed forward cannot change the user's data)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, (list, tuple)):
        return type(value)(clone_tensors(v) for v in value)
    if isinstance(value, dict):
        return {k: clone_tensors(v) for k, v in value.items()}
    return value


def cuda_indices(model: nn.Module) -> list[int]:
    """The CUDA devices holding ``model``'s parameters (for ``torch.random.fork_rng``)."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
