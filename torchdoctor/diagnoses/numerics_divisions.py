"""What became of each division the numerics rule ``division-by-zero`` flagged: was the
inf/NaN it produced masked away afterwards, and did its result reach a model?

``r = 1 / rowsum`` followed by ``r[torch.isinf(r)] = 0`` is the usual GCN normalisation
(pytorch/examples gcn and gat): the inf of an isolated node is repaired on the next
line, so the division is not a bug. And a 0 denominator only makes training *wrong*
when the division's result reaches a model (its input, its forward) or the prediction
side (loss, metrics); a division run while preparing data whose result is never seen
there is a warning at most.

So the op tracer tells the :class:`DivisionLedger` about every flagged division, every
repair (``x[mask] = v``, ``masked_fill``, ``torch.where`` by an ``isinf`` / ``isnan`` /
``isfinite`` / ``== inf`` mask of the division's result, or ``nan_to_num`` of it) and
every tensor that enters a model or meets its output; :meth:`DivisionLedger.verdict`
then says, per line of code, what to report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from torchdoctor.scriptrun.observations import OpNode

#: tests that pick out the inf/NaN of a tensor (their first input)
NONFINITE_TESTS = frozenset({"isinf", "isnan", "isposinf", "isneginf", "isfinite"})
#: comparisons that pick out inf when compared with an infinite number
COMPARISONS = frozenset({"eq", "ne", "ge", "gt", "le", "lt"})
#: masks combined: a repair by any of their parts is seen through them
MASK_COMBINATIONS = frozenset({
    "__invert__", "logical_not", "bitwise_not", "__or__", "logical_or", "bitwise_or",
    "__and__", "logical_and", "bitwise_and"})
#: ops that overwrite the masked entries of one of their inputs
MASKED_REPAIRS = frozenset({"__setitem__", "masked_fill", "masked_fill_", "where",
                            "index_put", "index_put_", "masked_scatter"})
#: ops that replace every inf/NaN of their first input
FULL_REPAIRS = frozenset({"nan_to_num", "nan_to_num_"})
#: how many nodes one reachability walk may visit (a bigger graph: not followed, so a
#: division stays a warning rather than risk a false error)
WALK_LIMIT = 20000


@dataclass
class _Site:
    """The divisions flagged at one line of code."""

    what: str
    total: int = 0
    repaired: int = 0
    #: divisions that already had a 0 denominator and were not repaired
    zero: int = 0
    #: ... of which the result reached a model or the prediction side
    wrong: int = 0


@dataclass
class _Division:
    site: _Site
    zero: bool
    reached: bool = False
    repaired: bool = False


class DivisionLedger:
    """The divisions flagged so far and what became of them (see the module docstring).
    Divisions are keyed by their trace node, weakly: a result nobody holds any more
    can neither be repaired nor reach anything, and its line keeps its counts."""

    def __init__(self, through: Callable[[OpNode], OpNode]) -> None:
        #: the node that really produced a tensor's values (casts and views skipped)
        self._through = through
        self._sites: dict[str, _Site] = {}
        self._flagged: WeakKeyDictionary[OpNode, _Division] = WeakKeyDictionary()
        #: divisions with a 0 denominator whose result has not been seen reaching a model
        self._waiting: WeakKeyDictionary[OpNode, _Division] = WeakKeyDictionary()

    def flagged(self, node: OpNode, *, zero: bool, what: str) -> None:
        """The rule flagged ``node``; ``zero``: its denominator already has a 0."""
        site = self._sites.setdefault(str(node.location), _Site(what))
        division = _Division(site, zero)
        site.total += 1
        site.zero += zero
        self._flagged[node] = division
        if zero:
            self._waiting[node] = division
            if node.pred:  # a loss or metric computed from the model's output
                self._reach(node, division)

    @property
    def waiting(self) -> bool:
        """Whether some division with a 0 denominator has not reached a model yet."""
        return bool(self._waiting)

    def followed(self, node: OpNode) -> None:
        """A traced call: a repair of a flagged division, or the prediction side meeting
        other tensors (a loss meets its targets)."""
        if node.op in FULL_REPAIRS and node.inputs:
            self._repair(node.inputs[0])
        elif node.op in MASKED_REPAIRS:
            self.masked(node.inputs)
        if node.pred and self._waiting:
            self.reached(n for n in node.inputs if n is not None and not n.pred)

    def masked(self, operands: Iterable[OpNode | None]) -> None:
        """``operands`` of one masked overwrite (``x[mask] = v``, ``where``...): a mask
        that tests a flagged division's result for inf/NaN, next to that result, repairs
        it."""
        nodes = [self._through(n) for n in operands if n is not None]
        for mask in nodes:
            for tested in self._tested(mask):
                if any(other is tested for other in nodes if other is not mask):
                    self._repair(tested)

    def reached(self, nodes: Iterable[OpNode | None]) -> None:
        """These tensors entered a model, came out of one, or met its output: every
        waiting division they derive from reached it."""
        if not self._waiting:
            return
        stack = [n for n in nodes if n is not None]
        seen: set[int] = set()
        while stack and len(seen) < WALK_LIMIT:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            division = self._waiting.get(node)
            if division is not None:
                self._reach(node, division)
            stack.extend(n for n in node.inputs if n is not None)

    def verdict(self, location: str) -> tuple[str, str] | None:
        """``(observed, what)`` for the divisions at ``location``: ``observed`` is
        ``repaired`` (say nothing), ``div`` (a 0 denominator reached a model: an error),
        ``div-unreached`` (a 0 denominator seen only outside the model: a warning) or
        ``""`` (no 0 yet: the latent warning). None for a line it did not see."""
        site = self._sites.get(location)
        if site is None:
            return None
        if site.repaired >= site.total:
            return "repaired", site.what
        if site.wrong:
            return "div", site.what
        return ("div-unreached" if site.zero else ""), site.what

    def _repair(self, node: OpNode | None) -> None:
        division = self._flagged.pop(node, None) if node is not None else None
        if division is None or division.repaired:
            return
        division.repaired = True
        site = division.site
        site.repaired += 1
        site.zero -= division.zero
        site.wrong -= division.zero and division.reached
        self._waiting.pop(node, None)  # type: ignore[arg-type]

    def _reach(self, node: OpNode, division: _Division) -> None:
        self._waiting.pop(node, None)
        if not division.reached and not division.repaired:
            division.reached = True
            division.site.wrong += 1

    def _tested(self, mask: OpNode) -> list[OpNode]:
        """The tensors whose inf/NaN ``mask`` picks out (``isinf(x)``, ``x == inf``,
        ``~torch.isfinite(x)``, ``isnan(x) | isinf(x)``...)."""
        first = mask.inputs[0] if mask.inputs else None
        if mask.op in NONFINITE_TESTS and first is not None:
            return [self._through(first)]
        if mask.op in COMPARISONS and first is not None \
                and any(math.isinf(s) for s in mask.scalars):
            return [self._through(first)]
        if mask.op in MASK_COMBINATIONS:
            return [t for part in mask.inputs if part is not None
                    for t in self._tested(self._through(part))]
        return []
