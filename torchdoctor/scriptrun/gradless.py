"""The gradient-coverage recorder of a script run: parameters an optimizer holds that
never had a gradient at any of its steps.

Fed by the global forward pre-hook (which modules ran, and whether in training with
gradients on) and the optimizer step post-hook (which of each optimizer's parameters had
a ``.grad``). At the end of the run it keeps the parameters of the observed models that
require a gradient, sit in an optimizer whose other parameters did get gradients, and
never had one themselves; parameters of modules that ran only in eval mode or under
``no_grad`` are left out (used for evaluation on purpose). The words are
:mod:`torchdoctor.diagnoses.parameters`'.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from torchdoctor.scriptrun.callsite import user_callsite
from torchdoctor.scriptrun.observations import CodeLocation, GradlessRecord, ScriptRun
from torchdoctor.scriptrun.progress import bookkeeping


@dataclass
class _Held:
    """What an optimizer that stepped held: parameter id -> a weak reference to it."""

    optimizer_type: str
    location: CodeLocation | None  #: its first ``step()``
    params: dict[int, weakref.ref[torch.Tensor]] = field(default_factory=dict)


class GradlessRecorder:
    """Finds optimizer parameters that never receive a gradient."""

    def __init__(self, run: ScriptRun, models: Callable[[], list[nn.Module]],
                 name_of: Callable[[torch.Tensor], str]) -> None:
        self.run = run
        self._models = models
        self._name_of = name_of
        self._ran: set[int] = set()  # ids of modules that ran a forward
        self._trained: set[int] = set()  # ... in training mode with gradients on
        self._with_grad: set[int] = set()  # ids of parameters with a grad at a step
        # per optimizer: its parameters, weakly (an optimizer is often freed before the
        # run ends: a local of the script's main(); the record must outlive it)
        self._held: weakref.WeakKeyDictionary[torch.optim.Optimizer, _Held] = \
            weakref.WeakKeyDictionary()
        self._all: list[_Held] = []

    def forward(self, module: nn.Module) -> None:
        """A module is about to run."""
        self._ran.add(id(module))
        if module.training and torch.is_grad_enabled():
            self._trained.add(id(module))

    @bookkeeping
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Note which of the optimizer's parameters had a gradient at this step."""
        held = self._held.get(optimizer)
        if held is None:
            held = self._held[optimizer] = _Held(type(optimizer).__name__, user_callsite())
            self._all.append(held)
        for group in optimizer.param_groups:
            for param in group["params"]:
                held.params.setdefault(id(param), weakref.ref(param))
                if param.grad is not None:
                    self._with_grad.add(id(param))

    def close(self) -> None:
        """Record, per optimizer, the parameters that never had a gradient."""
        owners = self._owners()
        for held in self._all:
            params = [p for p in (ref() for ref in held.params.values()) if p is not None]
            if not any(id(p) in self._with_grad for p in params):
                continue  # no gradient at all: the no-gradient findings own that
            names: list[str] = []
            unused: list[str] = []
            for param in params:
                owner = owners.get(id(param))
                if owner is None or not param.requires_grad or id(param) in self._with_grad:
                    continue
                module_name, module = owner
                if id(module) in self._ran and id(module) not in self._trained:
                    continue  # it ran only in eval mode or under no_grad: on purpose
                names.append(self._name_of(param))
                if id(module) not in self._ran and module_name not in unused:
                    unused.append(module_name)
            if names:
                self.run.gradless.append(GradlessRecord(held.optimizer_type, held.location,
                                                        names, unused))
        self._ran.clear()
        self._trained.clear()

    def _owners(self) -> dict[int, tuple[str, nn.Module]]:
        """Parameter id -> (qualified name, module) of the module that holds it, over the
        observed models."""
        owners: dict[int, tuple[str, nn.Module]] = {}
        for model in self._models():
            for name, module in model.named_modules():
                for param in module.parameters(recurse=False):
                    owners.setdefault(id(param), (name or type(model).__name__, module))
        return owners
