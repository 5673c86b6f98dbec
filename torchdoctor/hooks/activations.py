"""ActivationStats: dead units of ReLU-like activations and saturation of Sigmoid/Tanh,
counted on the device as small tensors while training runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchdoctor.hooks.base import HookSet

#: activation type -> what is measured: "dead" (units never positive) or
#: "saturated" (fraction of outputs in the flat tails). Add entries to measure more.
ACTIVATION_MEASURES: dict[type[nn.Module], str] = {
    nn.ReLU: "dead", nn.ReLU6: "dead", nn.LeakyReLU: "dead", nn.PReLU: "dead",
    nn.GELU: "dead", nn.ELU: "dead", nn.SELU: "dead", nn.CELU: "dead", nn.SiLU: "dead",
    nn.Mish: "dead", nn.Sigmoid: "saturated", nn.Tanh: "saturated",
}


def _saturated_mask(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """Outputs in the flat tails: sigmoid below 0.01 or above 0.99, |tanh| above 0.99."""
    if isinstance(module, nn.Sigmoid):
        return (out < 0.01) | (out > 0.99)
    return out.abs() > 0.99


@dataclass
class _Tally:
    type_name: str
    measure: str
    calls: int = 0
    count: torch.Tensor | None = None  # alive flags per unit, or saturated count
    total: int = 0  # units, or outputs seen
    skipped: int = 0  # calls whose unit count did not match the first call's


class ActivationStats(HookSet):
    """Dead-unit fractions of ReLU-like modules and saturation of Sigmoid/Tanh.

    *Dead*: for an output of 2+ dims, a unit is one index along dim 1 (a feature of a
    Linear layer's output, a channel of a conv's); for a 0/1-dim output the whole
    tensor is one unit. A unit is dead when no element of it (over the batch, spatial
    positions and every recorded call) was ever > 0. ``dead_relu[name]`` is the dead
    fraction of the units. *Saturated*: ``saturated[name]`` is the fraction of all
    recorded outputs with sigmoid < 0.01 or > 0.99, or |tanh| > 0.99.

    A module called several times in one forward of the model (a shared ``self.relu``)
    is recorded once per call position: ``relu``, ``relu#2``... Counts stay on the
    device as small tensors; nothing is synchronised until a result is read.
    """

    def __init__(self, model: nn.Module, *,
                 measures: dict[type[nn.Module], str] | None = None) -> None:
        super().__init__(model)
        self.measures = {**ACTIVATION_MEASURES, **(measures or {})}
        self._reset()

    def _reset(self) -> None:
        self._tallies: dict[str, _Tally] = {}
        self._calls_in_forward: dict[int, int] = {}
        self._root_calls = 0

    def _install(self) -> None:
        self._keep(self._model.register_forward_pre_hook(self._root_pre_hook))
        for qualname, module in self._model.named_modules():
            measure = self._measure_of(module)
            if measure is not None:
                self._keep(module.register_forward_hook(self._hook(qualname, measure)))

    def _measure_of(self, module: nn.Module) -> str | None:
        return next((m for t, m in self.measures.items() if isinstance(module, t)), None)

    def _root_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._root_calls += 1
        self._calls_in_forward.clear()

    def _key(self, qualname: str, module: nn.Module) -> str:
        position = self._calls_in_forward.get(id(module), 0) + 1
        if self._root_calls:
            self._calls_in_forward[id(module)] = position
        return qualname if position == 1 else f"{qualname}#{position}"

    def _hook(self, qualname: str, measure: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                return
            key = self._key(qualname or "<model>", module)
            tally = self._tallies.setdefault(key, _Tally(type(module).__name__, measure))
            with torch.no_grad():
                _accumulate(tally, module, output.detach())
        return hook

    @property
    def dead_relu(self) -> dict[str, float]:
        """Dead-unit fraction per ReLU-like module call position."""
        return {k: 1.0 - float(t.count.float().mean()) for k, t in self._tallies.items()
                if t.measure == "dead" and t.count is not None}

    @property
    def saturated(self) -> dict[str, float]:
        """Saturated-output fraction per Sigmoid/Tanh module call position."""
        return {k: float(t.count) / t.total for k, t in self._tallies.items()
                if t.measure == "saturated" and t.count is not None and t.total}

    def table(self, fmt: str = "table") -> str:
        """One row per recorded activation: name, type, calls, measure and value."""
        from torchdoctor.report import table

        rows = [[key, t.type_name, t.calls, *_value_cells(t)] for key, t in self._tallies.items()]
        return table(rows, ["module", "type", "calls", "measure", "value"], fmt)


def _accumulate(tally: _Tally, module: nn.Module, out: torch.Tensor) -> None:
    if out.numel() == 0:
        return
    tally.calls += 1
    if tally.measure == "saturated":
        count = _saturated_mask(module, out).sum()
        tally.count = count if tally.count is None else tally.count + count
        tally.total += out.numel()
        return
    dims = [d for d in range(out.dim()) if d != 1] if out.dim() >= 2 else None
    alive = (out.amax(dim=dims) if dims else out.max().reshape(1)) > 0
    if tally.count is None:
        tally.count, tally.total = alive, alive.numel()
    elif tally.count.shape == alive.shape:
        tally.count = tally.count | alive
    else:
        tally.skipped += 1


def _value_cells(tally: _Tally) -> list[str]:
    if tally.count is None:
        return [tally.measure, "-"]
    if tally.measure == "saturated":
        fraction = float(tally.count) / tally.total
        return ["saturated outputs", f"{fraction:.1%}"]
    dead = tally.total - int(tally.count.sum())
    return ["dead units", f"{dead}/{tally.total} ({dead / tally.total:.1%})"]

