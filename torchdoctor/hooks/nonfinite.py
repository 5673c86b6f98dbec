"""NonFiniteTracer: the first module whose output, and the first parameter whose gradient,
held NaN/inf, and the findings that say how to fix it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchdoctor.diagnoses.nonfinite import NONFINITE_CHECK_ID as NONFINITE_CHECK_ID
from torchdoctor.diagnoses.nonfinite import (
    NonFiniteHit,
    all_finite,
    first_nonfinite,
    gradient_finding,
    output_finding,
)
from torchdoctor.errors import NonFiniteError
from torchdoctor.findings import Finding
from torchdoctor.hooks.base import HookSet, module_info
from torchdoctor.tensors import stored_values, summarize


class NonFiniteTracer(HookSet):
    """Find the first module (in execution order) whose forward output holds NaN/inf,
    and the first parameter whose gradient does.

    Forward hooks run when a call finishes, so the first hit is the innermost,
    earliest module whose output went non-finite. For modules with ``inplace=True``
    the inputs are checked before the call (the call overwrites them). Gradients are
    checked by tensor hooks on each parameter as backward reaches it (nearest the loss
    first). After the first hit of each kind no further checks run, so leaving the
    tracer on costs one reduction per module call until something is found.
    """

    def __init__(self, model: nn.Module, *, gradients: bool = True) -> None:
        super().__init__(model)
        self.gradients = gradients
        self._hooks_were_none: list[torch.Tensor] = []
        self._reset()

    def _reset(self) -> None:
        self.first_output: NonFiniteHit | None = None
        self.first_gradient: NonFiniteHit | None = None
        self.model_inputs_finite: bool | None = None
        self._inplace_inputs_finite: dict[int, bool] = {}

    def reset(self) -> None:
        """Forget the hits so far (to watch the next step afresh)."""
        self._reset()

    @property
    def found(self) -> bool:
        """Whether any NaN/inf was seen (in an output or a gradient)."""
        return self.first_output is not None or self.first_gradient is not None

    def _install(self) -> None:
        self._keep(self._model.register_forward_pre_hook(self._root_pre_hook))
        for qualname, module in self._model.named_modules():
            if getattr(module, "inplace", False) is True:
                self._keep(module.register_forward_pre_hook(self._inplace_pre_hook))
            self._keep(module.register_forward_hook(self._output_hook(qualname)))
        if self.gradients:
            self._install_gradient_hooks()

    def _install_gradient_hooks(self) -> None:
        for name, param in self._model.named_parameters():
            if not param.requires_grad:
                continue
            if param._backward_hooks is None:
                self._hooks_were_none.append(param)
            self._keep(param.register_hook(self._gradient_hook(name, param)))

    def _restore(self) -> None:
        # register_hook turned a parameter's hook dict from None into {}: put None back.
        params, self._hooks_were_none = self._hooks_were_none, []
        for param in params:
            if param._backward_hooks is not None and not param._backward_hooks:
                param._backward_hooks = None

    def _root_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.first_output is None:
            self.model_inputs_finite = all_finite(args)

    def _inplace_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.first_output is None:
            self._inplace_inputs_finite[id(module)] = all_finite(args)

    def _output_hook(self, qualname: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self.first_output is not None:
                return
            bad = first_nonfinite(output)
            if bad is None:
                return
            inputs_finite = self._inplace_inputs_finite.pop(id(module), None)
            if inputs_finite is None:
                inputs_finite = all_finite(args)
            self.first_output = NonFiniteHit(qualname, module_info(qualname, module),
                                             inputs_finite, summarize(bad))
        return hook

    def _gradient_hook(self, name: str, param: torch.Tensor) -> Callable[..., None]:
        owner_name = name.rpartition(".")[0]
        owner = self._model.get_submodule(owner_name)
        info = module_info(owner_name, owner)

        def hook(grad: torch.Tensor) -> None:
            if self.first_gradient is None and \
                    not bool(torch.isfinite(stored_values(grad)).all()):
                value_finite = bool(torch.isfinite(param.detach()).all())
                self.first_gradient = NonFiniteHit(name, info, value_finite, summarize(grad))
        return hook

    def findings(self) -> list[Finding]:
        """The first cause as an error finding (check id ``nan-loss``): the output hit
        when there is one (gradients then go non-finite as a consequence), else the
        gradient hit."""
        if self.first_output is not None:
            return [output_finding(self.first_output, self.model_inputs_finite)]
        if self.first_gradient is not None:
            return [gradient_finding(self.first_gradient)]
        return []

    def raise_if_found(self) -> None:
        """Raise :class:`~torchdoctor.errors.NonFiniteError` when a NaN/inf was seen."""
        found = self.findings()
        if found:
            raise NonFiniteError(_join(found), found)


def _join(found: list[Finding]) -> str:
    return "; ".join(f"{f.message} (fix: {f.hint})" for f in found)
