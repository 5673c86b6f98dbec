"""Telling a model's deliberate sampling from randomness that eval() should have
turned off.

A VAE draws ``torch.randn_like(std)`` in ``forward``; a policy network samples its
action; pytorch/tutorials' dynamic_net picks its depth with Python's
``random.randint``: the outputs differ between two eval-mode runs by design. A dropout
that ignores ``self.training`` (``F.dropout(x, p)``, ``F.scaled_dot_product_attention``
with a fixed ``dropout_p``) differs too, and that is the bug. :class:`RandomCalls`
records, while active, which random functions ran and whether a dropout drew in
training mode; it also notes draws from Python's ``random``, NumPy's global generator
and torch's CPU generator that the function mode cannot see (their states are compared,
and Python's and NumPy's restored on exit: the caller's RNGs are left as they were).
"""

from __future__ import annotations

import random
import sys
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from torchdoctor.diagnoses.wording import name_list

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
        #: the sampling functions that ran (``randn_like``...)
        self.samplers: set[str] = set()
        self.dropout_in_training = False
        #: generators whose state moved without a traced call (Python's ``random``...)
        self.generators: list[str] = []
        self._states: dict[str, Any] = {}

    @property
    def sampled(self) -> bool:
        """Whether a sampling function ran."""
        return bool(self.samplers)

    @property
    def sampling_only(self) -> bool:
        """Random draws happened, and none of them was a dropout in training mode."""
        return self.sampled and not self.dropout_in_training

    def drawn(self) -> str:
        """What drew random numbers, in words (empty when nothing was seen)."""
        names = [f"torch.{name}" for name in sorted(self.samplers)]
        return name_list([*names, *self.generators], 4)

    def __enter__(self) -> RandomCalls:
        self._states = _generator_states()
        super().__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        super().__exit__(*exc_info)
        after = _generator_states()
        self.generators = [name for name, state in self._states.items()
                           if not _same_state(state, after.get(name))
                           and not (name == _TORCH and (self.samplers or self.dropout_in_training))]
        random.setstate(self._states[_PYTHON])
        if _NUMPY in self._states:
            sys.modules["numpy"].random.set_state(self._states[_NUMPY])

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in SAMPLERS:
            self.samplers.add(name)
        elif name in DROPOUTS and _training_flag(args, kwargs):
            self.dropout_in_training = True
        elif name == "scaled_dot_product_attention" and _attention_dropout(args, kwargs):
            self.dropout_in_training = True
        return func(*args, **kwargs)


_PYTHON, _NUMPY, _TORCH = ("Python's `random`", "NumPy's global random generator",
                           "torch's random number generator")


def _generator_states() -> dict[str, Any]:
    """The states of the generators a forward may draw from without a traced call."""
    states: dict[str, Any] = {_PYTHON: random.getstate(), _TORCH: torch.get_rng_state()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        states[_NUMPY] = numpy.random.get_state()
    return states


def _same_state(before: Any, after: Any) -> bool:
    if isinstance(before, torch.Tensor):
        return isinstance(after, torch.Tensor) and torch.equal(before, after)
    if isinstance(before, tuple) and before and before[0] == "MT19937":  # NumPy's
        return after is not None and all(
            bool((a == b).all()) if hasattr(a, "all") else a == b
            for a, b in zip(before, after))
    return bool(before == after)


def _attention_dropout(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p)``: a dropout that
    no module's ``eval()`` switches off."""
    p = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
    return isinstance(p, (int, float)) and p > 0


def _training_flag(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """The ``training``/``train`` argument of a dropout call (default True for F.*)."""
    for key in ("training", "train"):
        if key in kwargs:
            return bool(kwargs[key])
    return bool(args[2]) if len(args) > 2 else True
