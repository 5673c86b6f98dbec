"""Installing global patches and hooks for one run, and taking every one of them back.

A script run patches class attributes torch shares with the whole process
(``DataLoader.__iter__``, ``Tensor.backward`` ...) and registers torch's global module and
optimizer hooks. Two things must hold whatever the user's script does with them:

* a failure half-way through installing undoes what was already installed
  (:meth:`PatchSet.install` is all or nothing);
* a wrapper that escaped the run (``from torch.nn.functional import cross_entropy``
  executed by the script keeps the wrapper in the script's namespace) must, once the
  run is over, call straight through to the original and keep nothing of the run alive.
  Wrappers therefore reach their run only through a :class:`RunLink`: a weak reference
  that :meth:`RunLink.cut` clears when the run ends.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

_T = TypeVar("_T", covariant=True)  # a link to a run is a link to what it implements


class _Removable(Protocol):
    def remove(self) -> None: ...


class RunLink(Generic[_T]):
    """A wrapper's only way to reach the run that installed it.

    :meth:`get` returns the run while it is active, None after :meth:`cut` (or once the
    run object was collected): the wrapper then behaves exactly as the original.
    """

    def __init__(self, target: _T) -> None:
        self._ref: weakref.ref[_T] | None = weakref.ref(target)

    def get(self) -> _T | None:
        """The run, or None when it is over."""
        return self._ref() if self._ref is not None else None

    def cut(self) -> None:
        """End the run for every wrapper holding this link (idempotent)."""
        self._ref = None


class PatchSet:
    """Attribute patches and hook handles installed together and removed together."""

    def __init__(self) -> None:
        self._patches: list[tuple[Any, str, Any]] = []
        self._handles: list[_Removable] = []
        self._cleanups: list[Callable[[], None]] = []

    def install(self, steps: Iterable[Callable[[PatchSet], None]]) -> None:
        """Run each installing step; if one fails, undo the steps already run (and what
        the failing one installed before failing) and re-raise."""
        try:
            for step in steps:
                step(self)
        except BaseException:
            self.undo()
            raise

    def patch(self, owner: Any, name: str, replacement: Any) -> None:
        """Set ``owner.name = replacement``, remembering the original (from ``vars``,
        so that an inherited attribute is deleted again rather than copied down)."""
        had_own = name in vars(owner)
        self._patches.append((owner, name, vars(owner)[name] if had_own else _INHERITED))
        setattr(owner, name, replacement)

    def hook(self, handle: _Removable) -> None:
        """Remember a hook handle (from torch's ``register_*`` functions) to remove."""
        self._handles.append(handle)

    def cleanup(self, undo: Callable[[], None]) -> None:
        """Remember anything else installed: ``undo()`` runs first at :meth:`undo`
        (what is installed last is taken back first)."""
        self._cleanups.append(undo)

    def undo(self) -> None:
        """Undo the other installs, remove every hook and restore every attribute, newest
        first (idempotent)."""
        while self._cleanups:
            self._cleanups.pop()()
        while self._handles:
            self._handles.pop().remove()
        while self._patches:
            owner, name, original = self._patches.pop()
            if original is _INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


class _Inherited:
    """Marks an attribute the owner did not define itself before it was patched."""

    def __repr__(self) -> str:
        return "<inherited>"


_INHERITED: Any = _Inherited()
