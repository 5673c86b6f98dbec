"""Telling a model's deliberate sampling from randomness that eval() should have
turned off.

A VAE draws ``torch.randn_like(std)`` in ``forward``; a policy network samples its
action: the outputs differ between two eval-mode runs by design. A functional dropout
that ignores ``self.training`` differs too, and that is the bug. :class:`RandomCalls`
records, while active, which random functions ran: dropout in training mode, or
sampling functions only.
"""

from __future__ import annotations

from typing import Any

from torch.overrides import TorchFunctionMode

#: random draws a model makes on purpose (torch.* and Tensor.* names)
SAMPLERS = frozenset({
    "randn", "randn_like", "rand", "rand_like", "randint", "randint_like", "normal",
    "normal_", "uniform_", "bernoulli", "bernoulli_", "multinomial", "poisson",
    "exponential_", "randperm", "rsample", "sample",
})
#: dropout functions; random only when called with training=True
DROPOUTS = frozenset({
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "feature_dropout",
})


class RandomCalls(TorchFunctionMode):
    """A TorchFunctionMode that notes random calls (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.sampled = False
        self.dropout_in_training = False

    @property
    def sampling_only(self) -> bool:
        """Random draws happened, and none of them was a dropout in training mode."""
        return self.sampled and not self.dropout_in_training

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in SAMPLERS:
            self.sampled = True
        elif name in DROPOUTS and _training_flag(args, kwargs):
            self.dropout_in_training = True
        return func(*args, **kwargs)


def _training_flag(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """The ``training``/``train`` argument of a dropout call (default True for F.*)."""
    for key in ("training", "train"):
        if key in kwargs:
            return bool(kwargs[key])
    return bool(args[2]) if len(args) > 2 else True
