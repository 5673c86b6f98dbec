"""Model mode of the eval-mode check: is a copy of the model deterministic in eval()?

The copy is put in eval mode and given the same batch twice under ``torch.no_grad()``,
the RNG running on between the runs (inside ``fork_rng``, so the caller's RNG is
untouched). Forward hooks fingerprint every module's inputs and output in both runs;
the first module (in the order modules finish) whose output differs tells where the
randomness is: in its own code when its inputs were equal, else in the code of the
module that called it, just before the call.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchdoctor.errors import UserCodeError, user_code

if TYPE_CHECKING:
    from torch import nn

    from torchdoctor.engine.context import CheckContext, ModelCandidate
    from torchdoctor.scriptrun.observations import CodeLocation, ModuleInfo

#: a functional dropout call: F.dropout(, torch.nn.functional.dropout2d(, torch.dropout(
_FUNCTIONAL_DROPOUT = re.compile(
    r"(?<![\w.])(?:F|functional|torch\.nn\.functional|nn\.functional|torch)\."
    r"(?:feature_alpha_|alpha_)?dropout[123]?d?\(|(?<![\w.])dropout\(")

Fingerprint = tuple[tuple[tuple[int, ...], int, float, float], ...]


@dataclass(frozen=True)
class EvalRandomness:
    """What the model-mode run found: message, location and fix."""

    message: str
    location: str
    hint: str
    #: only sampling functions drew (randn_like...), no dropout: a VAE's or a policy's
    #: sampling is the model itself, so this is a warning, not an error
    deliberate: bool = False


@dataclass
class _Call:
    qualname: str
    module: nn.Module
    inputs: Fingerprint
    output: Fingerprint


@dataclass
class _Trace:
    calls: list[_Call] = field(default_factory=list)
    output: Fingerprint = ()


def eval_nondeterminism(ctx: CheckContext, candidate: ModelCandidate) -> EvalRandomness | None:
    """Run a copy of ``candidate`` twice in eval mode on one batch; describe the
    randomness if the outputs differ, else None (also None when the batch does not fit
    the model: other checks say why)."""
    import torch

    from torchdoctor.tensors import set_training

    model = ctx.fresh_model(candidate)
    set_training(model, False)
    inputs, _ = ctx.training_setup(candidate).batch(ctx.options.device)
    device = torch.device(ctx.options.device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    from torchdoctor.diagnoses.sampling import RandomCalls

    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), RandomCalls() as calls:
            first = _traced_run(model, inputs)
            second = _traced_run(model, inputs)
    except UserCodeError:  # the user's model does not take the batch: other checks say why
        return None
    if _same(first.output, second.output):
        return None
    found = _describe(candidate.name, model, first, second)
    if not calls.sampling_only:
        return found
    return EvalRandomness(
        found.message.replace("stays random after `model.eval()`",
                              "draws random numbers (torch.randn_like, sampling...) after "
                              "`model.eval()`"),
        found.location,
        "fine if it is the model's sampling (a VAE's reparameterisation, a policy's "
        "action); noise or augmentation must depend on `self.training`", deliberate=True)


def _traced_run(model: nn.Module, inputs: Any) -> _Trace:
    from torchdoctor.reference.trainer import forward

    trace = _Trace()
    handles = []
    for qualname, module in model.named_modules():
        handles.append(module.register_forward_hook(_recorder(trace, qualname)))
    try:
        with user_code():
            output = forward(model, inputs)
        trace.output = _fingerprint(output)
    finally:
        for handle in handles:
            handle.remove()
    return trace


def _recorder(trace: _Trace, qualname: str) -> Any:
    def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        trace.calls.append(_Call(qualname, module, _fingerprint(args), _fingerprint(output)))

    return record


def _fingerprint(value: Any) -> Fingerprint:
    """Shape, NaN/inf counts, sum and sum of squares of each tensor: equal for repeated
    deterministic computations (NaN included), different as soon as one element changes."""
    import torch

    from torchdoctor.tensors import iter_tensors

    prints = []
    for tensor in iter_tensors(value):
        data = tensor.detach().double()
        finite = torch.isfinite(data)
        data = torch.where(finite, data, torch.zeros_like(data))
        prints.append((tuple(tensor.shape), int((~finite).sum()), float(data.sum()),
                       float(data.pow(2).sum())))
    return tuple(prints)


def _same(a: Fingerprint, b: Fingerprint) -> bool:
    """Equal fingerprints, up to the rounding of non-deterministic GPU reductions
    (randomness such as dropout changes the sums by far more)."""
    if len(a) != len(b):
        return False
    return all(x[:2] == y[:2] and math.isclose(x[2], y[2], rel_tol=1e-5, abs_tol=1e-6)
               and math.isclose(x[3], y[3], rel_tol=1e-5, abs_tol=1e-6)
               for x, y in zip(a, b))


def _describe(name: str, model: nn.Module, first: _Trace, second: _Trace) -> EvalRandomness:
    module, before = _culprit(model, first, second)
    info = _info(model, module)
    where = f"in {type(module).__name__}.forward" + (f", before {before}" if before else "")
    line = _dropout_line(module)
    location = str(line) if line is not None else f"{name}: {info.describe()}"
    message = (f"{name} gives different outputs for the same batch in eval mode: something "
               f"{where} stays random after `model.eval()`")
    if line is not None:
        message += " (a functional dropout without `training=self.training`)"
    hint = ("write `F.dropout(x, p, training=self.training)` or use an `nn.Dropout` module; "
            "any randomness in forward must depend on `self.training`")
    return EvalRandomness(message, location, hint)


def _culprit(model: nn.Module, first: _Trace, second: _Trace) -> tuple[nn.Module, str]:
    """The module whose code makes the difference, and the call it comes before."""
    modules = dict(model.named_modules())
    for one, two in zip(first.calls, second.calls):
        if one.qualname != two.qualname:
            break  # control flow itself differs between the runs
        if _same(one.output, two.output):
            continue
        if _same(one.inputs, two.inputs):
            return one.module, ""
        parent = one.qualname.rpartition(".")[0]
        return modules.get(parent, model), _info(model, one.module).describe()
    return model, ""


def _info(model: nn.Module, module: nn.Module) -> ModuleInfo:
    from torchdoctor.hooks import module_info

    qualname = next((n for n, m in model.named_modules() if m is module), "")
    return module_info(qualname, module)


def _dropout_line(module: nn.Module) -> CodeLocation | None:
    """The line of a functional dropout call without ``training`` in the module's
    forward, or None."""
    from torchdoctor.diagnoses.source import forward_source_line

    found = forward_source_line(
        module, lambda code: bool(_FUNCTIONAL_DROPOUT.search(code)) and "training" not in code)
    return found[0] if found is not None else None
