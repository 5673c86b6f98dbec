"""The kept-graph watch of a script run: losses whose ``backward()`` already ran but
whose autograd graph something of the user's still holds, steps later
(``total_loss += loss``, ``losses.append(loss)``): memory grows with every step.

How: before each ``backward()``, a small marker object goes into the ``metadata`` dict of
the loss's autograd node and of its direct inputs' nodes (a scaled loss's node, the
loss's own), and the watch keeps only a weak reference to it. The marker lives exactly
as long as the node. Two optimizer steps and two backward passes of the same line later
(four backward passes of the line before any step), a marker still alive means that the
node is still referenced: a healthy loop has rebound its ``loss`` variable by then.
Backward passes inside an optimizer's ``step()`` (LBFGS closures: it holds their first
loss for the whole step) are not watched. Then the user's frames are searched for the
tensor (or list of tensors) whose graph reaches a marked node, and its line of
accumulation is read from the source. A graph already marked (backpropagated twice, or
seen twice through nested backward wrappers) is not counted again; nor are shared nodes.
"""

from __future__ import annotations

import linecache
import re
import sys
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch

from torchdoctor.scriptrun.callsite import display_path, is_user_file, user_callsite
from torchdoctor.scriptrun.observations import CodeLocation, KeptGraphRecord, ScriptRun
from torchdoctor.scriptrun.progress import bookkeeping

_KEY = "torchdoctor.kept_graph"
#: a marker this many optimizer steps and backward passes of its line old, and still
#: alive: the graph is kept
AGE = 2
#: before any optimizer step (updates by hand, or the first accumulation window): this
#: many backward passes of the same line
AGE_WITHOUT_STEPS = 4
#: markers watched per backward line (the oldest are dropped)
_WATCHED = 64
#: graph nodes searched per tensor when looking for the keeper
_SEARCHED_NODES = 20_000
#: list elements searched per variable
_SEARCHED_ITEMS = 10_000


class _Marker:
    """Lives in an autograd node's metadata, as long as the node."""

    __slots__ = ("__weakref__", "count", "steps")

    def __init__(self, steps: int, count: int) -> None:
        self.steps = steps  #: optimizer steps applied when it was marked
        self.count = count  #: backward passes of its line when it was marked

    def old(self, steps: int, count: int) -> bool:
        """Whether a node marked then and alive now has outlived its step: two backward
        passes of its line and two optimizer steps later (a GAN steps twice per
        iteration and may hold the last iteration's losses until it rebinds them)."""
        if count - self.count < AGE:
            return False
        if steps > 0:
            return steps - self.steps >= AGE
        return count - self.count >= AGE_WITHOUT_STEPS


class KeptGraphWatch:
    """Finds backward lines whose earlier losses stay alive with their graph."""

    def __init__(self, run: ScriptRun, applied_steps: Callable[[], int]) -> None:
        self.run = run
        self._applied_steps = applied_steps
        self._marks: dict[CodeLocation | None, list[weakref.ref[_Marker]]] = {}
        self._count: dict[CodeLocation | None, int] = {}
        self._reported: set[CodeLocation | None] = set()
        #: set while an optimizer's ``step()`` runs: a closure's losses (LBFGS) belong to
        #: the optimizer, which may hold them for the whole step
        self.in_step = False

    @bookkeeping
    def before_backward(self, tensor: torch.Tensor) -> None:
        """Check the earlier losses of this backward line, then mark this one."""
        node = tensor.grad_fn
        if node is None or self.in_step or _KEY in _metadata(node):
            return  # the same graph again (a nested backward wrapper, retain_graph)
        location = user_callsite()
        if location in self._reported:
            return
        self._count[location] = count = self._count.get(location, 0) + 1
        steps = self._applied_steps()
        markers = [m for m in (ref() for ref in self._marks.get(location, [])) if m is not None]
        kept = [m for m in markers if m.old(steps, count)]
        if kept:
            self._report(location, len(kept), steps, count)
            return
        refs = [weakref.ref(m) for m in markers]
        for marked in (node, *(child for child, _ in node.next_functions)):
            if marked is None or _KEY in _metadata(marked) \
                    or type(marked).__name__ == "AccumulateGrad":
                continue  # shared with an earlier graph, or a leaf's accumulator
            marker = _Marker(steps, count)
            _metadata(marked)[_KEY] = marker
            refs.append(weakref.ref(marker))
        self._marks[location] = refs[-_WATCHED:]

    def _report(self, location: CodeLocation | None, kept: int, steps: int,
                count: int) -> None:
        self._reported.add(location)
        self._marks.pop(location, None)
        found = _find_keeper(sys._getframe(1), steps, count)
        variable, keeper = found if found is not None else ("", None)
        self.run.kept_graphs.append(KeptGraphRecord(location, keeper, variable, kept))


def _find_keeper(frame: types.FrameType | None, steps: int,
                 count: int) -> tuple[str, CodeLocation] | None:
    """The user's variable whose tensors reach an old marked node, and the line that
    accumulates into it."""
    while frame is not None:
        if is_user_file(frame.f_code.co_filename):
            for name, value in list(frame.f_locals.items()):
                if any(_reaches_old_mark(t, steps, count) for t in _tensors_in(value)):
                    return name, _accumulating_line(frame, name)
        frame = frame.f_back
    return None


def _tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """The tensor ``value``, or the tensors of a list/tuple/dict ``value`` (one level)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple, dict)):
        items = value.values() if isinstance(value, dict) else value
        for i, item in enumerate(items):
            if i >= _SEARCHED_ITEMS:
                return
            if isinstance(item, torch.Tensor):
                yield item


def _reaches_old_mark(tensor: torch.Tensor, steps: int, count: int) -> bool:
    """Whether the graph behind ``tensor`` holds a node marked long enough ago."""
    start = tensor.grad_fn
    if start is None:
        return False
    seen: set[int] = set()
    queue = deque([start])
    while queue and len(seen) < _SEARCHED_NODES:
        node = queue.popleft()
        if id(node) in seen:
            continue
        seen.add(id(node))
        marker = _metadata(node).get(_KEY)
        if isinstance(marker, _Marker) and marker.old(steps, count):
            return True
        queue.extend(child for child, _ in node.next_functions if child is not None)
    return False


def _metadata(node: Any) -> dict[str, Any]:
    """An autograd node's ``metadata`` dict (a property; torch's stubs say a method)."""
    metadata: dict[str, Any] = node.metadata
    return metadata


def _accumulating_line(frame: types.FrameType, name: str) -> CodeLocation:
    """The first line of ``frame``'s code that adds to ``name`` (``name +=``,
    ``name = name + ...``, ``name.append(``); the frame's current line if none."""
    code = frame.f_code
    pattern = re.compile(rf"^\s*{re.escape(name)}\s*(\+=|=.*\b{re.escape(name)}\b)"
                         rf"|\b{re.escape(name)}\.(append|extend|insert)\(")
    lines = sorted({line for _, _, line in code.co_lines() if line is not None})
    for line in lines:
        if pattern.search(linecache.getline(code.co_filename, line)):
            return CodeLocation(display_path(code.co_filename), line, code.co_name)
    return CodeLocation(display_path(code.co_filename), frame.f_lineno, code.co_name)
