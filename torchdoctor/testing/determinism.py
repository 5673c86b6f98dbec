"""``assert_eval_deterministic``: two eval-mode passes must agree, and when they do not,
which module's forward() draws random numbers."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchdoctor.engine.state import preserved_state
from torchdoctor.findings import Finding
from torchdoctor.hooks import module_info
from torchdoctor.reference.trainer import forward
from torchdoctor.tensors import iter_tensors
from torchdoctor.testing.errors import error, fail

_CHECK = "eval-determinism"
_HINT = ("use nn.Dropout modules (model.eval() switches them off) or pass "
         "training=self.training to F.dropout; guard other random operations "
         "(torch.rand*, noise) with `if self.training:`")


@dataclass
class _Call:
    """One module call: its name and (copies of) its input and output tensors."""

    qualname: str
    module: nn.Module
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


def _clone_all(value: Any) -> list[torch.Tensor]:
    return [t.detach().clone() for t in iter_tensors(value)]


def _record_calls(model: nn.Module, example: Any) -> tuple[list[_Call], Any]:
    """Run ``model`` on a fresh copy of ``example``; return its module calls in the
    order they finished, and the output. Hooks are removed before returning."""
    calls: list[_Call] = []
    pending: list[list[torch.Tensor]] = []
    handles = []
    for qualname, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda _m, args: pending.append(_clone_all(args))))
        handles.append(module.register_forward_hook(
            lambda m, _args, out, q=qualname: calls.append(
                _Call(q, m, pending.pop(), _clone_all(out)))))
    try:
        output = forward(model, copy.deepcopy(example))
    finally:
        for handle in handles:
            handle.remove()
    return calls, output


def _same(a: list[torch.Tensor], b: list[torch.Tensor], atol: float, rtol: float) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype
        and torch.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True) for x, y in zip(a, b))


def _divergence(model: nn.Module, first: list[_Call], second: list[_Call], atol: float,
                rtol: float) -> Finding | None:
    """The first module call whose outputs differ between the runs, explained."""
    for a, b in zip(first, second):
        if a.qualname != b.qualname:
            message = (f"the two eval-mode runs called different modules "
                       f"({a.qualname or '<model>'} vs {b.qualname or '<model>'}): "
                       "forward() branches on random numbers")
            return error(_CHECK, message, a.qualname or "<model>", _HINT)
        if not _same(a.outputs, b.outputs, atol, rtol):
            return _differing_call(model, a, b, atol, rtol)
    return None


def _differing_call(model: nn.Module, a: _Call, b: _Call, atol: float,
                    rtol: float) -> Finding:
    """Why one module call gave different outputs: its own randomness when its inputs
    agree, else randomness in its parent's forward() code between submodule calls."""
    info = module_info(a.qualname, a.module).describe()
    if _same(a.inputs, b.inputs, atol, rtol):
        message = (f"{info} returns different outputs for identical inputs in eval "
                   "mode: its forward() draws random numbers regardless of "
                   "self.training")
        return error(_CHECK, message, info, _HINT)
    parent = a.qualname.rpartition(".")[0]
    where = module_info(parent, model.get_submodule(parent)).describe()
    message = (f"the input of {info} differs between two eval-mode runs although every "
               f"module before it returned the same output: the forward() code of "
               f"{where} draws random numbers (e.g. F.dropout without "
               "training=self.training)")
    return error(_CHECK, message, where, _HINT)


def _max_difference(out1: Any, out2: Any) -> str:
    a = next(iter_tensors(out1), None)
    b = next(iter_tensors(out2), None)
    if a is None or b is None or a.shape != b.shape:
        return ""
    diff = (a.double() - b.double()).abs().nan_to_num(0.0)
    return f"largest difference in the model output: {float(diff.max()):.4g}"


def assert_eval_deterministic(model: nn.Module, example: Any, *, atol: float = 0.0,
                              rtol: float = 0.0) -> None:
    """Fail unless two eval-mode forward passes of a copy of ``model`` on ``example``
    give the same output (within ``atol``/``rtol``; exact by default).

    On failure, names the first module whose output differs, or the module whose own
    forward() code draws random numbers between submodule calls (the usual culprit:
    ``F.dropout(x)`` without ``training=self.training``).
    """
    __tracebackhide__ = True
    trial = copy.deepcopy(model).eval()
    with preserved_state(), torch.no_grad():
        first, out1 = _record_calls(trial, example)
        second, out2 = _record_calls(trial, example)
    if _same(_clone_all(out1), _clone_all(out2), atol, rtol):
        return
    finding = _divergence(trial, first, second, atol, rtol)
    fail("two eval-mode forward passes on the same input gave different outputs",
         [finding] if finding else [], _max_difference(out1, out2))
