"""Detects gradients carried over between *hand-written* updates: a loop with no
optimizer that updates tensors itself (``with torch.no_grad(): w -= lr * w.grad``)
must clear ``w.grad`` afterwards (``w.grad.zero_()`` or ``w.grad = None``), or the
next ``backward()`` adds the new gradient to the old one, exactly like a missing
``optimizer.zero_grad()``.

The idea: at each ``backward()`` the graph's leaves (tensors with ``requires_grad``
that no optimizer owns) are found. A leaf that was seen at an earlier backward, whose
value changed since (an update happened) and whose ``.grad`` is still non-zero, is
about to have the old gradient summed with the new one. Several backward passes with
no update in between (accumulation) are never flagged, and neither is a leaf nobody
updates (an input with ``requires_grad`` whose gradient is only read).

The records are :class:`~torchdoctor.scriptrun.observations.CarriedGradRecord` with
``manual=True``; the ``missing-zero-grad`` check reports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torchdoctor.scriptrun.observations import CarriedGradRecord, CodeLocation
from torchdoctor.tensors import stored_values


class ManualUpdateDetector:
    """Watches the leaves of each backward pass that no optimizer owns.

    ``owned(tensor)`` says whether an optimizer steps a tensor (those are the
    :class:`~torchdoctor.diagnoses.gradcarry.GradCarryDetector`'s); ``name_of`` maps a
    tensor to a readable name.
    """

    def __init__(self, owned: Callable[[torch.Tensor], bool],
                 name_of: Callable[[torch.Tensor], str]) -> None:
        self.records: list[CarriedGradRecord] = []
        self._owned = owned
        self._name_of = name_of
        # id(leaf) -> (leaf, version, fingerprint) after the last backward it took part in
        self._seen: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self._leaves: list[torch.Tensor] = []
        self._updates = 0
        self._idle = False  # every leaf is an optimizer's: nothing left to watch

    def before_backward(self, loss: torch.Tensor, location: CodeLocation | None) -> None:
        """Call before ``loss.backward()`` runs."""
        if self._idle or loss.grad_fn is None:
            self._leaves = []
            return
        with torch.no_grad():
            self._leaves = [leaf for leaf in _graph_leaves(loss) if not self._owned(leaf)]
            carried = [leaf for leaf in self._leaves if self._carries(leaf)]
        if carried:
            self._updates += 1
            self.records.append(CarriedGradRecord(
                optimizer=-1, optimizer_type="manual update", step_index=self._updates,
                step_location=location, params=[self._name_of(t) for t in carried],
                manual=True))

    def after_backward(self, optimizers_seen: bool) -> None:
        """Call after ``backward()``: remember the leaves as they are now."""
        if not self._leaves and optimizers_seen and self._seen:
            self._idle = True  # the optimizers own every leaf now
        with torch.no_grad():
            for leaf in self._leaves:
                self._seen[id(leaf)] = (leaf, leaf._version, _fingerprint(leaf))
        self._leaves = []

    def close(self) -> None:
        """Drop every reference to the user's tensors."""
        self._seen.clear()
        self._leaves = []

    def _carries(self, leaf: torch.Tensor) -> bool:
        seen = self._seen.get(id(leaf))
        if seen is None or seen[0] is not leaf or leaf.grad is None:
            return False
        updated = leaf._version != seen[1] or not torch.equal(_fingerprint(leaf), seen[2])
        return updated and bool(stored_values(leaf.grad).ne(0).any())


def _fingerprint(tensor: torch.Tensor) -> torch.Tensor:
    """Two reductions that change when the values do (``w.data -= ...`` bypasses the
    version counter), accumulated in float64 without copying the tensor."""
    values = tensor.detach()
    return torch.stack([values.sum(dtype=torch.float64),
                        torch.linalg.vector_norm(values, dtype=torch.float64)]).cpu()


def _graph_leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors ``loss.backward()`` accumulates gradients into."""
    leaves: list[torch.Tensor] = []
    seen: set[int] = set()
    stack: list[Any] = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves.append(variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves
