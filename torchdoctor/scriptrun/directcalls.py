"""Spotting calls that bypass what ``nn.Module.__call__`` and ``torch.load`` guard.

* ``model.forward(x)`` written instead of ``model(x)``: the module's forward runs
  without ``__call__``, so its hooks never fire. Seen from the first submodule call
  inside it: that submodule's ``__call__`` is entered with no module ``__call__`` active,
  from a ``forward`` frame of a module. Only a call written ``.forward(`` on a line of
  the user's own file, outside any module method, is recorded: ``super().forward(x)``
  and ``self.block.forward(x)`` inside a module, and torch's own callers, are not.
* ``torch.load`` with ``weights_only`` False: see :func:`wrap_load`.
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
import types
from collections.abc import Callable
from typing import Any, Protocol

from torch import nn

from torchdoctor.scriptrun.callsite import is_user_file, location_of, user_callsite
from torchdoctor.scriptrun.observations import CodeLocation, DirectForwardRecord, LoadRecord
from torchdoctor.scriptrun.patches import RunLink
from torchdoctor.scriptrun.wrappers import note_checkpoint


class LoadObserver(Protocol):
    """What the ``torch.load`` wrapper tells its run."""

    def unsafe_load(self, record: LoadRecord) -> None:
        """Record a load that may unpickle arbitrary objects."""

    def checkpoint_call(self, kind: str, location: CodeLocation) -> None:
        """Record a checkpoint call (the program's checkpoint phase)."""


def wrap_load(original: Callable[..., Any], link: RunLink[LoadObserver]) -> Callable[..., Any]:
    """``torch.load``: records calls whose effective ``weights_only`` is False (written
    ``False``, or left out where torch's default is not weights-only), then loads."""

    @functools.wraps(original)
    def observed_load(*args: Any, **kwargs: Any) -> Any:
        run = link.get()
        if run is not None:
            note_checkpoint(run, "load", sys._getframe(1))
            given = kwargs.get("weights_only")
            pickle_module = args[2] if len(args) > 2 else kwargs.get("pickle_module")
            if not _weights_only(given, pickle_module):
                run.unsafe_load(LoadRecord(user_callsite(), explicit=given is False))
            del run  # nothing of the run is held across the user's load
        return original(*args, **kwargs)

    return observed_load


def _weights_only(given: bool | None, pickle_module: Any) -> bool:
    """Whether this ``torch.load`` call is weights-only, as torch decides it: the
    argument, else torch's default (True from 2.6 when no ``pickle_module`` is given),
    each overridden by the ``TORCH_FORCE_(NO_)WEIGHTS_ONLY_LOAD`` environment variables
    the way ``torch.load`` reads them."""
    from torch import serialization

    if _env_true("TORCH_FORCE_WEIGHTS_ONLY_LOAD"):
        return True
    if given is not None:
        return bool(given)
    if _env_true("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        return False
    default = getattr(serialization, "_default_to_weights_only", None)  # torch 2.6+
    return bool(default(pickle_module)) if default is not None else False


def _env_true(name: str) -> bool:
    return os.getenv(name, "0").lower() in ("1", "y", "yes", "true")


def direct_forward_call(frame: types.FrameType | None) -> DirectForwardRecord | None:
    """The user's ``.forward(`` call behind a submodule call that runs with no module
    ``__call__`` active, or None. ``frame``: a frame inside that submodule's
    ``__call__`` (the global forward pre-hook's)."""
    while frame is not None and frame.f_code.co_name != "_wrapped_call_impl":
        frame = frame.f_back
    if frame is None:
        return None
    caller = frame.f_back
    called: nn.Module | None = None
    while caller is not None and _module_method(caller) and caller.f_code.co_name == "forward":
        called = caller.f_locals["self"]
        caller = caller.f_back
    if called is None or caller is None or not is_user_file(caller.f_code.co_filename):
        return None
    if _module_method(caller):  # a module's own method (training_step...): its business
        return None
    line = linecache.getline(caller.f_code.co_filename, caller.f_lineno)
    if ".forward(" not in line:
        return None
    return DirectForwardRecord(location_of(caller), type(called).__name__)


def _module_method(frame: types.FrameType) -> bool:
    """Whether ``frame`` runs a method of an ``nn.Module`` (its ``self`` is one)."""
    if "self" not in frame.f_code.co_varnames[:1]:
        return False
    return isinstance(frame.f_locals.get("self"), nn.Module)
