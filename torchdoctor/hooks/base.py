"""The hook-set base class and the small helpers every hook set shares.

:class:`HookSet` owns the hook handles and removes them all on exit; the helpers turn
modules and tensors into the picklable records of :mod:`torchdoctor.observations` and
test nested values for NaN/inf (with :mod:`torchdoctor.diagnoses.nonfinite`'s test).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from torchdoctor.diagnoses.nonfinite import all_finite as all_finite
from torchdoctor.diagnoses.nonfinite import first_nonfinite as first_nonfinite
from torchdoctor.scriptrun.observations import ModuleInfo, TensorSummary
from torchdoctor.tensors import iter_tensors


def module_info(qualname: str, module: nn.Module) -> ModuleInfo:
    """The :class:`ModuleInfo` of ``module`` under its qualified name."""
    return ModuleInfo(qualname, type(module).__name__, module.extra_repr())


def shape_summary(tensor: torch.Tensor) -> TensorSummary:
    """Shape, dtype and device only: no statistics, so no device synchronisation."""
    return TensorSummary(tuple(int(s) for s in tensor.shape), str(tensor.dtype),
                         str(tensor.device))


def shape_summaries(value: Any) -> tuple[TensorSummary, ...]:
    """Cheap summaries of every tensor in a nested value (non-tensors are skipped)."""
    return tuple(shape_summary(t) for t in iter_tensors(value))


def call_inputs(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> tuple[Any, ...]:
    """A module call's positional and keyword arguments as one tuple."""
    return (*args, *(kwargs or {}).values())


class HookSet:
    """Base of the hook sets: owns the handles and removes them all on exit.

    Subclasses implement :meth:`_install` (calling :meth:`_keep` on every handle) and
    may override :meth:`_reset` (called on enter) and :meth:`_restore` (on exit).
    A hook set may be entered again after it exited; records start afresh.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._handles: list[RemovableHandle] = []
        self._active = False

    def __enter__(self) -> Any:
        if self._active:
            raise RuntimeError(f"{type(self).__name__} is already active")
        self._reset()
        self._active = True
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    @property
    def active(self) -> bool:
        """Whether the hooks are installed (inside the ``with`` block)."""
        return self._active

    def _keep(self, handle: RemovableHandle) -> None:
        self._handles.append(handle)

    def _remove(self) -> None:
        handles, self._handles = self._handles, []
        try:
            for handle in reversed(handles):
                handle.remove()
        finally:
            self._active = False
            self._restore()

    def _install(self) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        """Clear the records of an earlier ``with`` block."""

    def _restore(self) -> None:
        """Undo what installing changed beyond the hook dictionaries."""
