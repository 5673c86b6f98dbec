"""The replacements a script run installs for torch's functions and its global hooks.

Each wrapper reaches its run only through a :class:`~torchdoctor.scriptrun.patches.RunLink`
(a weak reference cut when the run ends). A wrapper that outlives the run (the script
did ``from torch.nn.functional import cross_entropy`` and kept the name) then calls
straight through to the original with the caller's arguments, records nothing and keeps
nothing of the run alive.
"""

from __future__ import annotations

import functools
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from torchdoctor.scriptrun.callsite import is_user_file, location_of
from torchdoctor.scriptrun.observations import CodeLocation
from torchdoctor.scriptrun.patches import RunLink

Wrapper = Callable[..., Any]


class RunObserver(Protocol):
    """What a wrapper tells the run it belongs to (implemented by ``Instrumentation``)."""

    @property
    def inside_module(self) -> bool:
        """Whether a module's forward is running (a loss called there is not recorded)."""

    def loader_pass(self, loader: Any, batches: Iterator[Any]) -> Iterator[Any]:
        """Start a DataLoader pass over ``batches``; return the iterator to hand out."""

    def functional_loss(self, name: str, args: tuple[Any, ...], output: Any,
                        options: dict[str, Any]) -> None:
        """Record a functional loss called outside any module."""

    def before_backward(self, tensor: torch.Tensor) -> None:
        """A ``backward()`` of ``tensor`` is about to run."""

    def backward(self, value: float | None, started: float) -> None:
        """Record a finished ``backward()`` that started at ``started`` (perf_counter)."""

    def backward_succeeded(self) -> None:
        """The ``backward()`` returned (the budget may end the run here)."""

    def zero_grad(self, owner: Any) -> None:
        """Note a ``zero_grad`` call of ``owner`` (an optimizer or a module)."""

    def internal_error(self, method: str, trace: str) -> None:
        """torchdoctor's own ``method`` failed with ``trace`` (see :func:`observe`)."""


def observe(run: Any, method: str, *args: Any, fallback: Any = None) -> Any:
    """Call ``run.<method>(*args)``, torchdoctor's own recording. A bug in it must not
    reach the user's script, where it would be reported as the script's error: it goes to
    ``run.internal_error`` (the checks that read the run then report ``crashed``) and the
    script goes on; ``fallback`` is returned instead. The budget's StopRun and the
    timeout are BaseExceptions: they pass."""
    try:
        return getattr(run, method)(*args)
    except Exception:  # our own recorder failed: never the user's error
        run.internal_error(method, traceback.format_exc())
        return fallback


def wrap_loader_iter(original: Wrapper, link: RunLink[RunObserver]) -> Wrapper:
    """``DataLoader.__iter__``: each pass is counted and limited by the run."""

    @functools.wraps(original)
    def limited_iter(loader: Any, *args: Any, **kwargs: Any) -> Any:
        run = link.get()
        if run is None:
            return original(loader, *args, **kwargs)
        batches = original(loader, *args, **kwargs)
        return observe(run, "loader_pass", loader, batches, fallback=batches)

    return limited_iter


def wrap_backward(original: Wrapper, link: RunLink[RunObserver]) -> Wrapper:
    """``Tensor.backward``: the loss value and the time of each backward pass."""

    # under a __torch_function__ mode (the op tracer, GPU emulation) Tensor.backward
    # re-dispatches through its class attribute, that is, this wrapper: the nested call
    # is the same backward pass, counted once
    running = [0]

    @functools.wraps(original)
    def observed_backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        run = link.get()
        if run is None or running[0]:
            return original(tensor, *args, **kwargs)
        value = float(tensor.detach()) if tensor.numel() == 1 else None
        observe(run, "before_backward", tensor)
        del run  # no strong reference across the user's backward
        started = time.perf_counter()
        running[0] += 1
        try:
            result = original(tensor, *args, **kwargs)
        finally:
            running[0] -= 1
            run = link.get()
            if run is not None:
                observe(run, "backward", value, started)
        run = link.get()
        if run is not None:
            run.backward_succeeded()
        return result

    return observed_backward


def wrap_zero_grad(original: Wrapper, link: RunLink[RunObserver]) -> Wrapper:
    """``Optimizer.zero_grad`` / ``Module.zero_grad``: where gradients are cleared."""

    @functools.wraps(original)
    def observed_zero_grad(owner: Any, *args: Any, **kwargs: Any) -> Any:
        run = link.get()
        if run is not None:
            observe(run, "zero_grad", owner)
        return original(owner, *args, **kwargs)

    return observed_zero_grad


def wrap_functional_loss(name: str, original: Wrapper, link: RunLink[RunObserver]) -> Wrapper:
    """``torch.nn.functional.<name>``: recorded when called outside any module (inside
    one, the module's own forward is what is observed)."""

    # torch re-dispatches a functional call through the module's global name (that
    # is, this wrapper) when a __torch_function__ mode is on (the op tracer): the
    # nested call is the same loss, recorded once
    running = [0]

    @functools.wraps(original)
    def observed_loss(*args: Any, **kwargs: Any) -> Any:
        run = link.get()
        if run is None or running[0] or under_functorch():
            return original(*args, **kwargs)
        inside_module = run.inside_module
        running[0] += 1
        try:
            output = original(*args, **kwargs)
        finally:
            running[0] -= 1
        if not inside_module:
            prediction = args[0] if args else kwargs.get("input")
            target = args[1] if len(args) > 1 else kwargs.get("target")
            options = {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float))}
            observe(run, "functional_loss", name, (prediction, target), output, options)
        return output

    return observed_loss


class CheckpointObserver(Protocol):
    """What a checkpoint wrapper tells its run."""

    def checkpoint_call(self, kind: str, location: CodeLocation) -> None:
        """Record a ``torch.save``/``torch.load``/``load_state_dict`` call."""


def wrap_checkpoint(kind: str, original: Wrapper,
                    link: RunLink[CheckpointObserver]) -> Wrapper:
    """``torch.save`` / ``Module.load_state_dict``: recorded (the checkpoint phase) when
    the user's own code calls it, then called with the caller's arguments."""

    @functools.wraps(original)
    def observed_checkpoint(*args: Any, **kwargs: Any) -> Any:
        run = link.get()
        if run is not None:
            note_checkpoint(run, kind, sys._getframe(1))
            del run  # nothing of the run is held across the user's call
        return original(*args, **kwargs)

    return observed_checkpoint


def note_checkpoint(run: CheckpointObserver, kind: str, caller: types.FrameType) -> None:
    """Tell ``run`` of a checkpoint call made directly by the user's code (a library's
    own loads, a dataset reading its files, are not the program's checkpoint phase)."""
    if is_user_file(caller.f_code.co_filename):
        run.checkpoint_call(kind, location_of(caller))


def under_functorch() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``...) is running.

    Its tensors are functorch wrappers with no storage of their own: a snapshot or a
    summary of them raises ("Cannot access storage of BatchedTensorImpl"), and the
    module it runs holds them in place of its parameters (``functional_call``). The
    recorders leave such calls alone, so the program runs as it does with python."""
    return torch._C._functorch.maybe_current_level() is not None


def routed(method: str, link: RunLink[Any]) -> Callable[..., None]:
    """A global hook for torch's registries that calls ``run.<method>`` while the run
    is active and does nothing after."""

    def hook(*args: Any) -> None:
        run = link.get()
        if run is not None and not under_functorch():
            observe(run, method, *args)

    hook.__qualname__ = hook.__name__ = f"torchdoctor_{method}"
    return hook
