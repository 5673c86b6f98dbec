"""Randomness left in eval mode: is a model deterministic after ``model.eval()``?

One recorder and one comparison for the eval-mode check (model mode) and
:func:`torchdoctor.testing.assert_eval_deterministic`. The model (a copy: the callers
never pass the user's own) is put in eval mode and given the same input twice under
``torch.no_grad()``, the RNG running on between the runs inside ``fork_rng`` (the
caller's RNG is untouched). When the outputs differ, two more runs record every module
call (copies of its inputs and outputs, in the order calls finish): the first call whose
output differs tells where the randomness is: in its own code when its inputs were
equal, else in the code of the module that called it, just before the call. A
functional dropout without ``training=`` in that code is pointed at by line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchdoctor.diagnoses import eval_mode
from torchdoctor.diagnoses.sampling import RandomCalls
from torchdoctor.findings import Finding, Severity
from torchdoctor.hooks import module_info
from torchdoctor.reference.trainer import forward
from torchdoctor.scriptrun.observations import CodeLocation
from torchdoctor.tensors import copy_value, iter_tensors, set_training

#: a functional dropout call: F.dropout(, torch.nn.functional.dropout2d(, torch.dropout(
_FUNCTIONAL_DROPOUT = re.compile(
    r"(?<![\w.])(?:F|functional|torch\.nn\.functional|nn\.functional|torch)\."
    r"(?:feature_alpha_|alpha_)?dropout[123]?d?\(|(?<![\w.])dropout\(")


@dataclass
class _Call:
    """One module call: its name and (copies of) its input and output tensors."""

    qualname: str
    module: nn.Module
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


@dataclass(frozen=True)
class Tolerance:
    """How close two runs' tensors must be to count as equal (``torch.allclose``)."""

    atol: float = 0.0
    rtol: float = 0.0

    def same(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        """Equal lists of tensors: shapes, dtypes and values (NaN equal to NaN)."""
        return len(a) == len(b) and all(
            x.shape == y.shape and x.dtype == y.dtype
            and torch.allclose(x, y, rtol=self.rtol, atol=self.atol, equal_nan=True)
            for x, y in zip(a, b))


@dataclass(frozen=True)
class EvalRandomness:
    """What two eval-mode runs showed: the finding, and the largest difference between
    their first output tensors (None when they cannot be compared)."""

    finding: Finding
    largest_difference: float | None


#: the check's tolerance: non-deterministic GPU reductions round differently run to run
#: (randomness such as dropout changes outputs by far more)
CHECK_TOLERANCE = Tolerance(atol=1e-6, rtol=1e-5)


def eval_randomness(model: nn.Module, example: Any, *, subject: str = "the model",
                    prefix: str = "", tolerance: Tolerance = Tolerance(),
                    ) -> EvalRandomness | None:
    """Run ``model`` (put in eval mode) twice on ``example``: when the outputs differ,
    the ``eval-mode`` finding that says where the randomness is, else None. ``subject``
    names the model in the message, ``prefix`` starts a module location (``Net: ``)."""
    set_training(model, False)
    with torch.random.fork_rng(devices=_cuda_devices(model)), torch.no_grad(), \
            RandomCalls() as calls:
        out1, out2 = _clone_all(_run(model, example)), _clone_all(_run(model, example))
        if tolerance.same(out1, out2):
            return None
        first, second = _record_calls(model, example), _record_calls(model, example)
    finding = _describe(model, first, second, tolerance, subject, prefix, calls)
    return EvalRandomness(finding, _largest_difference(out1, out2))


def _largest_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float | None:
    if not a or not b or a[0].shape != b[0].shape:
        return None
    return float((a[0].double() - b[0].double()).abs().nan_to_num(0.0).max())


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({t.device.index or 0 for t in [*model.parameters(), *model.buffers()]
                   if t.device.type == "cuda"})


def _run(model: nn.Module, example: Any) -> Any:
    """One forward on a fresh copy of ``example`` (a model that edits its input in
    place must not change the second run's)."""
    return forward(model, copy_value(example))


def _clone_all(value: Any) -> list[torch.Tensor]:
    return [t.detach().clone() for t in iter_tensors(value)]


def _record_calls(model: nn.Module, example: Any) -> list[_Call]:
    """One forward of ``model``; its module calls in the order they finished. The hooks
    are removed before returning."""
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
        _run(model, example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _describe(model: nn.Module, first: list[_Call], second: list[_Call],
              tolerance: Tolerance, subject: str, prefix: str, calls: RandomCalls
              ) -> Finding:
    """The first module call whose output differs between the runs, explained."""
    for a, b in zip(first, second):
        if a.qualname != b.qualname:
            message = eval_mode.branches_on_randomness(
                subject, _info(model, a.module), _info(model, b.module))
            return _finding(message, _where(model, model, prefix), calls)
        if tolerance.same(a.outputs, b.outputs):
            continue
        if tolerance.same(a.inputs, b.inputs):
            return _culprit(model, a.module, "", subject, prefix, calls)
        parent = a.qualname.rpartition(".")[0]
        return _culprit(model, model.get_submodule(parent), _info(model, a.module), subject,
                        prefix, calls)
    return _culprit(model, model, "", subject, prefix, calls)


def _culprit(model: nn.Module, module: nn.Module, before: str, subject: str,
             prefix: str, calls: RandomCalls) -> Finding:
    """The finding naming ``module``'s forward (before the call ``before``, if given)."""
    line = _dropout_line(module)
    message = eval_mode.random_in_eval(subject, _info(model, module), type(module).__name__,
                                       before, functional_dropout=line is not None,
                                       drawn=calls.drawn())
    return _finding(message, str(line) if line is not None else
                    _where(model, module, prefix), calls)


def _finding(message: str, location: str, calls: RandomCalls) -> Finding:
    """An error where a dropout drew in eval mode (``F.dropout`` without ``training=``):
    eval() was meant to switch it off. Other randomness (sampling, Python's ``random``, a
    random depth, or state kept between calls) can be the model's design: a warning."""
    if calls.dropout_in_training:
        return Finding(eval_mode.FINDING_ID, Severity.ERROR, message, location,
                       eval_mode.RANDOM_HINT)
    return Finding(eval_mode.FINDING_ID, Severity.WARNING, message, location,
                   eval_mode.SAMPLING_HINT)


def _info(model: nn.Module, module: nn.Module) -> str:
    """``fc2 (Linear, ...)`` for a submodule; the class name for the model itself."""
    if module is model:
        return type(model).__name__
    qualname = next((n for n, m in model.named_modules() if m is module), "")
    return module_info(qualname, module).describe()


def _where(model: nn.Module, module: nn.Module, prefix: str) -> str:
    """The location of a module: ``Net: 1 (Noisy)``; the model itself by its class name
    after the candidate's name (``model: Poly``), once if they are the same (``Net``)."""
    label = _info(model, module)
    return label if prefix.rstrip(": ") == label else f"{prefix}{label}"


def _dropout_line(module: nn.Module) -> CodeLocation | None:
    """The line of a functional dropout call without ``training`` in the module's
    forward, or None."""
    from torchdoctor.diagnoses.source import forward_source_line

    found = forward_source_line(
        module, lambda code: bool(_FUNCTIONAL_DROPOUT.search(code)) and "training" not in code)
    return found[0] if found is not None else None
