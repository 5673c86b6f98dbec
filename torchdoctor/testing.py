"""Assertion helpers for your own tests: ``assert_params_update(model, batch)`` and friends.

Each helper works on copies (your model, optimizer and global RNG are left as they were)
and fails with :class:`TorchDoctorAssertionError`, whose message is the findings table
the ``torchdoctor`` command prints: which module, which parameter, which shapes, and the
fix. They are plain functions: they work under pytest, unittest or a bare script::

    from torchdoctor.testing import assert_overfits_batch, assert_params_update

    def test_model_trains():
        model = MyNet()
        assert_params_update(model, (inputs, targets))   # every parameter gets updated
        assert_overfits_batch(model, (inputs, targets))  # it can memorise one batch

A *batch* is ``(inputs, targets)``; the model is called as ``model(*inputs)`` when
``inputs`` is a tuple, else ``model(inputs)``. Where a helper takes ``loss_fn=None`` it
uses cross-entropy for integer targets and mean squared error for float targets.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from torchdoctor.errors import DiagnosisError
from torchdoctor.findings import Finding, Outcome, Report, Severity
from torchdoctor.hooks import module_info
from torchdoctor.reference import forward, train_steps
from torchdoctor.report import findings_table, render_text
from torchdoctor.state import preserved_state
from torchdoctor.tensors import iter_tensors, to_device

if TYPE_CHECKING:
    from torchdoctor.context import CheckOptions

__all__ = [
    "TorchDoctorAssertionError",
    "assert_eval_deterministic",
    "assert_finite",
    "assert_healthy",
    "assert_no_grad_leak",
    "assert_output_shape",
    "assert_overfits_batch",
    "assert_params_update",
    "assert_report_ok",
    "assert_same_device",
    "assert_valid_batch",
    "explain_comparison",
]

LossFn = Callable[..., torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
#: an optimizer to copy along with the model, a factory called with the copy's
#: parameters, or None for the helper's default
OptimizerSpec = torch.optim.Optimizer | OptimizerFactory | None

#: assert_overfits_batch passes once the loss is below this fraction of its first value
OVERFIT_RATIO = 0.05
OVERFIT_STEPS = 300


class TorchDoctorAssertionError(AssertionError):
    """A torchdoctor assertion failed. ``findings`` holds what was found; the message
    is a one-line summary, the findings table and optional details."""

    def __init__(self, summary: str, *, findings: Sequence[Finding] = (),
                 details: str = "") -> None:
        self.summary = summary
        self.findings = list(findings)
        parts = [summary]
        if self.findings:
            parts.append(findings_table(self.findings))
        if details:
            parts.append(details)
        super().__init__("\n\n".join(parts))


def _fail(summary: str, findings: Sequence[Finding] = (), details: str = "") -> None:
    __tracebackhide__ = True
    raise TorchDoctorAssertionError(summary, findings=findings, details=details)


def _error(check: str, message: str, location: str = "", hint: str = "") -> Finding:
    return Finding(check, Severity.ERROR, message, location, hint)


def _from_diagnosis(exc: DiagnosisError) -> None:
    """Re-raise a validator's typed error as an assertion failure."""
    __tracebackhide__ = True
    summary = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    _fail(summary, exc.findings)


# ---------------------------------------------------------------- batches and copies


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` for a 2-item tuple or list; ``(batch, None)`` otherwise."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def default_loss(output: Any, targets: Any) -> torch.Tensor:
    """Cross-entropy for integer targets, MSE for float targets, and the mean square of
    the output when there are no targets (enough to send a gradient everywhere)."""
    prediction = next(iter_tensors(output))
    if targets is None:
        return prediction.float().square().mean()
    if not targets.is_floating_point():
        return F.cross_entropy(prediction, targets)
    return F.mse_loss(prediction, targets)


def _loss(output: Any, targets: Any, loss_fn: LossFn | None) -> torch.Tensor:
    if loss_fn is None:
        return default_loss(output, targets)
    return loss_fn(output, targets) if targets is not None else loss_fn(output)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _trial(model: nn.Module, optimizer: OptimizerSpec,
           default: OptimizerFactory) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A deep copy of the model in training mode and an optimizer over the copy.

    A given optimizer instance is deep-copied *together with* the model, so the copy's
    parameter groups (and any state) refer to the copied parameters."""
    if isinstance(optimizer, torch.optim.Optimizer):
        trial, trial_optimizer = copy.deepcopy((model, optimizer))
    else:
        trial = copy.deepcopy(model)
        trial_optimizer = (optimizer or default)(trial.parameters())
    trial.train()
    return trial, trial_optimizer


def _adam(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def _sgd(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-2)


def _where(model: nn.Module, param_name: str) -> str:
    """``fc1.weight (Linear)``: the parameter and the type of the module owning it."""
    owner = model.get_submodule(param_name.rpartition(".")[0])
    return f"{param_name} ({type(owner).__name__})"


def _shape(tensor: torch.Tensor) -> str:
    return f"({', '.join(str(s) for s in tensor.shape)})"


# ---------------------------------------------------------------- assert_finite


@dataclass(frozen=True)
class _Leaf:
    """One tensor to check, with where it is and what it is (for the message)."""

    path: str
    kind: str  # "parameter", "gradient", "buffer" or "tensor"
    tensor: torch.Tensor
    owner: str = ""


def _module_leaves(model: nn.Module) -> Iterator[_Leaf]:
    for name, param in model.named_parameters():
        owner = type(model.get_submodule(name.rpartition(".")[0])).__name__
        yield _Leaf(name, "parameter", param.detach(), owner)
        if param.grad is not None:
            yield _Leaf(name, "gradient", param.grad.detach(), owner)
    for name, buffer in model.named_buffers():
        owner = type(model.get_submodule(name.rpartition(".")[0])).__name__
        yield _Leaf(name, "buffer", buffer.detach(), owner)


def _structure_leaves(value: Any, path: str) -> Iterator[_Leaf]:
    if isinstance(value, torch.Tensor):
        yield _Leaf(path, "tensor", value.detach())
    elif isinstance(value, (float, int)) and not isinstance(value, bool):
        yield _Leaf(path, "tensor", torch.tensor(float(value)))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _structure_leaves(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _structure_leaves(item, f"{path}[{index}]")


_FINITE_HINTS = {
    "parameter": "the weights were corrupted by an earlier step: lower the learning rate, "
                 "clip gradients (torch.nn.utils.clip_grad_norm_) and stop before "
                 "optimizer.step() when the loss is not finite",
    "gradient": "find the first module producing NaN/inf with torchdoctor.hooks."
                "NonFiniteTracer (or torch.autograd.set_detect_anomaly(True)); look for "
                "log/sqrt of values <= 0, division by zero and exp overflow",
    "buffer": "a running statistic went non-finite: check the inputs of this module "
              "(normalisation layers accumulate whatever they see)",
    "tensor": "check the inputs and the operations producing this value: division by zero, "
              "log of 0 (add an epsilon), exp overflow, uninitialised memory (torch.empty)",
}


def _finite_finding(leaf: _Leaf) -> Finding | None:
    tensor = leaf.tensor
    if tensor.device.type == "meta" or not (tensor.is_floating_point() or tensor.is_complex()):
        return None
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    if not nan and not inf:
        return None
    what = f"{leaf.kind} {leaf.path}" if leaf.kind != "gradient" else f"gradient of {leaf.path}"
    owner = f"{leaf.owner}, " if leaf.owner else ""
    message = (f"{what} ({owner}shape {_shape(tensor)}, {str(tensor.dtype)[6:]}) holds "
               f"{nan} NaN and {inf} inf among {tensor.numel()} values")
    location = f"{leaf.path} ({leaf.owner})" if leaf.owner else leaf.path
    return _error("finite", message, location, _FINITE_HINTS[leaf.kind])


def assert_finite(value: Any, *, name: str = "value") -> None:
    """Fail unless every float tensor in ``value`` is free of NaN and inf.

    ``value`` is a tensor, a number, a nested list/tuple/dict of them, or an
    ``nn.Module`` (its parameters, their gradients and its buffers are checked).
    """
    __tracebackhide__ = True
    if isinstance(value, nn.Module):
        leaves = _module_leaves(value)
    else:
        leaves = _structure_leaves(value, name)
    findings = [f for f in (_finite_finding(leaf) for leaf in leaves) if f is not None]
    if findings:
        _fail(f"{len(findings)} tensor(s) hold NaN or inf", findings)


# ---------------------------------------------------------------- assert_params_update


@dataclass
class _StepResult:
    """One training step on a copy: the copy, its parameters before the step, their
    gradients, the loss, and the names of parameters in the optimizer."""

    model: nn.Module
    before: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None]
    loss: float
    optimized: set[str]
    loss_has_graph: bool = True


def _one_step(model: nn.Module, batch: Any, loss_fn: LossFn | None,
              optimizer: OptimizerSpec) -> _StepResult:
    trial, opt = _trial(model, optimizer, _adam)
    named = {n: p for n, p in trial.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in named.items()}
    in_groups = {id(p) for group in opt.param_groups for p in group["params"]}
    optimized = {n for n, p in named.items() if id(p) in in_groups}
    inputs, targets = split_batch(to_device(batch, _device_of(trial)))
    opt.zero_grad(set_to_none=True)
    loss = _loss(forward(trial, inputs), targets, loss_fn)
    if loss.requires_grad:
        loss.backward()
    grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in named.items()}
    opt.step()
    return _StepResult(trial, before, grads, float(loss.detach()), optimized,
                       loss.requires_grad)


_STALE_HINTS = {
    "no-graph": "the loss is not connected to any parameter: do not compute it under "
                "torch.no_grad(), from .detach()/.item()/.numpy() values, or from "
                "tensors rebuilt with torch.tensor(...)",
    "not-in-optimizer": "build the optimizer from model.parameters() after the model is "
                        "complete (layers added or replaced later are not in it)",
    "no-grad": "make the parameter take part in computing the loss: use the layer in "
               "forward() and do not .detach() its output; if it should stay fixed, "
               "freeze it with requires_grad_(False)",
    "zero-grad": "the loss does not depend on it here: dead ReLUs (all pre-activations "
                 "negative), a zero-initialised layer after it, masking, or an unused "
                 "output branch",
    "nonfinite": "the gradient holds NaN/inf: see assert_finite and torchdoctor's "
                 "nan-loss check",
    "no-change": "its gradient is non-zero but optimizer.step() left it unchanged: check "
                 "the learning rate of its parameter group (0, or too small for the "
                 "parameter's magnitude)",
}


def _stale_reason(step: _StepResult, name: str) -> tuple[str, str]:
    """Why parameter ``name`` did not change: (kind, sentence)."""
    grad = step.grads[name]
    if not step.loss_has_graph:
        return "no-graph", "the loss does not require grad, so no gradient reached it"
    if name not in step.optimized:
        return "not-in-optimizer", "it is not in the optimizer's param_groups"
    if grad is None:
        return "no-grad", "it received no gradient (.grad is None)"
    if not bool(torch.isfinite(grad).all()):
        return "nonfinite", "its gradient holds NaN/inf"
    if not bool(grad.ne(0).any()):
        return "zero-grad", "its gradient is exactly zero"
    return "no-change", "the optimizer step did not change it"


def _stale_message(step: _StepResult, name: str, old: torch.Tensor) -> tuple[str, str] | None:
    """(message, kind) when parameter ``name`` did not learn from the loss, else None."""
    kind, reason = _stale_reason(step, name)
    if torch.equal(old, step.model.get_parameter(name).detach()):
        return f"{name} (shape {_shape(old)}) did not change after one training step: " \
               f"{reason}", kind
    if kind in ("no-graph", "no-grad", "zero-grad"):  # moved by weight decay or momentum only
        return f"{name} (shape {_shape(old)}) changed only through the optimizer's weight " \
               f"decay or momentum: {reason}", kind
    return None


def _stale_findings(step: _StepResult, check: str) -> list[Finding]:
    findings = []
    for name, old in step.before.items():
        stale = _stale_message(step, name, old)
        if stale is not None:
            message, kind = stale
            findings.append(_error(check, message, _where(step.model, name), _STALE_HINTS[kind]))
    return findings


def assert_params_update(model: nn.Module, batch: Any, loss_fn: LossFn | None = None,
                         optimizer: OptimizerSpec = None, *, seed: int | None = 0) -> None:
    """Fail unless one training step changes every trainable parameter through its
    gradient.

    The step runs on a deep copy of ``model`` (in training mode): zero_grad, forward,
    ``loss_fn(output, targets)``, backward, step. ``optimizer`` is an optimizer built
    over ``model`` (copied along with it), a factory ``params -> optimizer``, or None
    (Adam, lr 1e-3, which moves every parameter whose gradient is not zero). Frozen
    parameters (``requires_grad=False``) are not checked. The failure names each
    parameter that did not change and why (no gradient, zero gradient, not in the
    optimizer...); a parameter moved only by weight decay or momentum, without a
    gradient, fails too. ``model`` and the global RNG are untouched.
    """
    __tracebackhide__ = True
    with preserved_state(seed):
        step = _one_step(model, batch, loss_fn, optimizer)
        findings = _stale_findings(step, "params-update")
    if not step.before:
        _fail("the model has no trainable parameters (all have requires_grad=False)")
    if findings:
        _fail(f"{len(findings)} of {len(step.before)} trainable parameter(s) did not "
              f"learn in one training step (loss {step.loss:.4g})", findings)


# ---------------------------------------------------------------- assert_overfits_batch


def _default_batch() -> tuple[torch.Tensor, torch.Tensor]:
    from torchdoctor.data import reference_batch

    inputs, targets, _kind = reference_batch(32)
    return inputs, targets


def _curve(losses: list[float]) -> str:
    """A few points of the loss curve: ``step 0: 2.30, step 75: 1.20, ...``."""
    picks = sorted({0, *(len(losses) * k // 4 for k in (1, 2, 3)), len(losses) - 1})
    return "loss by step: " + ", ".join(f"{i}: {losses[i]:.4g}" for i in picks)


def _overfit_findings(losses: list[float], target: float, steps: int) -> list[Finding]:
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if bad is not None:
        return [_error("overfit-batch", f"the loss became {losses[bad]} at step {bad}",
                       "loss", "lower the learning rate or clip gradients; find where "
                       "NaN/inf starts with torchdoctor.hooks.NonFiniteTracer")]
    message = (f"could not overfit one batch: the loss went from {losses[0]:.4g} to "
               f"{losses[-1]:.4g} (best {min(losses):.4g}) in {len(losses)} steps, "
               f"target < {target:.4g}")
    hint = ("a model that cannot memorise a single batch has a bug: the loss input "
            "(softmax before CrossEntropyLoss?), targets that do not match the outputs, "
            "frozen or detached layers, a learning rate far off; or raise steps= for "
            f"a larger model (ran {steps})")
    return [_error("overfit-batch", message, "loss", hint)]


def _overfit_losses(model: nn.Module, batch: Any, loss_fn: LossFn | None,
                    optimizer_factory: OptimizerFactory | None, steps: int,
                    threshold: float | None) -> tuple[list[float], float]:
    """Train a copy on ``batch`` until the loss is below the target; (losses, target).
    No losses when the loss is not connected to any trainable parameter."""
    trial, opt = _trial(model, optimizer_factory, _adam)
    inputs, targets = split_batch(to_device(batch, _device_of(trial)))
    loss = loss_fn or default_loss
    if not _loss(forward(trial, inputs), targets, loss).requires_grad:
        return [], math.nan
    losses = train_steps(trial, (inputs, targets), loss, opt, 1)
    target = threshold if threshold is not None else OVERFIT_RATIO * abs(losses[0])
    if math.isfinite(losses[0]) and not losses[0] < target:
        losses += train_steps(trial, (inputs, targets), loss, opt, steps - 1,
                              stop_below=target)
    return losses, target


def assert_overfits_batch(model: nn.Module, batch: Any = None, loss_fn: LossFn | None = None,
                          optimizer_factory: OptimizerFactory | None = None, *,
                          steps: int = OVERFIT_STEPS, threshold: float | None = None,
                          seed: int | None = 0) -> list[float]:
    """Fail unless a copy of ``model`` can drive the loss on one fixed batch close to 0.

    Trains a deep copy (training mode) for up to ``steps`` steps on ``batch``
    (default: 32 FashionMNIST images, or the synthetic stand-in) with
    ``optimizer_factory(params)`` (default Adam, lr 1e-3), stopping as soon as the loss
    is below ``threshold`` (default: 5% of the first loss). A healthy model memorises
    one batch; one that cannot has a bug. On failure the message shows the loss curve
    and names parameters a step does not update. Returns the losses.
    """
    __tracebackhide__ = True
    batch = _default_batch() if batch is None else batch
    with preserved_state(seed):
        losses, target = _overfit_losses(model, batch, loss_fn, optimizer_factory, steps,
                                         threshold)
    if losses and min(losses) < target:  # NaN compares False: a NaN run fails below
        return losses
    with preserved_state(seed):
        stale = _stale_findings(_one_step(model, batch, loss_fn, optimizer_factory),
                                "overfit-batch")
    found = _overfit_findings(losses, target, steps) if losses else []
    _fail("the model could not overfit a single batch", found + stale,
          _curve(losses) if losses else "")
    return losses  # unreachable: _fail raised


# ---------------------------------------------------------------- assert_no_grad_leak


def _carry_findings(records: list[Any]) -> list[Finding]:
    findings = []
    for record in records:
        names = ", ".join(record.params[:6]) + (" ..." if len(record.params) > 6 else "")
        message = (f"gradients from optimizer step {record.step_index} "
                   f"({record.optimizer_type}) were still in .grad when the next backward "
                   f"pass added to them: zero_grad() is missing or clears something else")
        hint = ("call optimizer.zero_grad() once per step, before loss.backward() (or right "
                "after optimizer.step()); with gradient accumulation, zero right after "
                "each optimizer.step()")
        findings.append(_error("grad-leak", message, names, hint))
    return findings


def assert_no_grad_leak(model: nn.Module, train_step: Callable[..., Any], batch: Any,
                        optimizer: OptimizerSpec = None, *, steps: int = 3,
                        seed: int | None = 0) -> None:
    """Fail when ``train_step`` lets gradients carry over from one optimizer step into
    the next (a missing or misplaced ``optimizer.zero_grad()``).

    ``train_step(model, optimizer, batch)`` is your own step function (forward, loss,
    backward, step). It is called ``steps`` times on a deep copy of ``model`` with an
    optimizer over the copy: ``optimizer`` given as an instance is copied with the
    model; a factory is called with the copy's parameters; None means SGD (lr 0.01).
    Gradient accumulation (several backward passes per step, zeroed after the step)
    passes. The step function must call ``optimizer.step()`` on the optimizer it gets.
    """
    __tracebackhide__ = True
    from torchdoctor.gradcarry import GradCarryDetector

    with preserved_state(seed):
        trial, opt = _trial(model, optimizer, _sgd)
        names = {id(p): n for n, p in trial.named_parameters()}
        detector = GradCarryDetector(name_of=lambda p: names.get(id(p), "parameter"))
        detector.watch(opt)
        stepped: list[int] = []

        def after_step(stepped_optimizer: Any, _args: Any, _kwargs: Any) -> None:
            stepped.append(1)
            detector.note_step(stepped_optimizer)

        handle = opt.register_step_post_hook(after_step)
        try:
            trial_batch = to_device(batch, _device_of(trial))
            for _ in range(steps):
                train_step(trial, opt, trial_batch)
        finally:
            handle.remove()
            detector.close()
    if not stepped:
        _fail("train_step(model, optimizer, batch) never called optimizer.step() on the "
              "optimizer it was given, so no gradient leak can be judged")
    findings = _carry_findings(detector.records)
    if findings:
        _fail(f"gradients carried over between optimizer steps in {steps} calls of "
              f"{getattr(train_step, '__name__', 'train_step')}", findings)


# ---------------------------------------------------------------- devices, shapes, batches


def assert_same_device(model: nn.Module, *tensors: Any) -> None:
    """Fail unless the model's parameters and buffers and every tensor in ``tensors``
    (nested structures allowed) are on one device; names what is where."""
    __tracebackhide__ = True
    from torchdoctor.validators import check_devices

    try:
        check_devices(model, *tensors)
    except DiagnosisError as exc:
        _from_diagnosis(exc)


def assert_output_shape(model: nn.Module, example: Any, expected_shape: Sequence[int | None]
                        ) -> None:
    """Fail unless ``model(example)`` returns a tensor of ``expected_shape`` (``None``
    entries match any size). On a mismatch, or when the forward pass itself fails on
    shapes, the message names the module and the fix and shows the shapes flowing
    through every module. The model is run under ``no_grad`` and left as it was."""
    __tracebackhide__ = True
    from torchdoctor.validators import check_output

    try:
        check_output(model, example, expected_shape)
    except DiagnosisError as exc:
        summary = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _fail(summary, exc.findings, _shape_table(model, example))


def _shape_table(model: nn.Module, example: Any) -> str:
    """Input and output shapes of every module call, on a copy of ``model``."""
    from torchdoctor.hooks import ShapeTracer

    trial = copy.deepcopy(model)
    tracer = ShapeTracer(trial)
    with preserved_state(), torch.no_grad(), tracer:
        try:
            forward(trial, example)
        except Exception:  # the table shows how far the forward pass got
            pass
    return "shapes through the model:\n" + tracer.table()


def assert_valid_batch(batch: Any, *, num_classes: int | None = None,
                       reference: bool = True) -> None:
    """Fail when a batch (``(inputs, targets)``, a dict or a bare inputs tensor) has
    NaN/inf, constant inputs, raw 0..255 pixels (with ``reference``, compared with
    FashionMNIST after ``ToTensor()``), mismatched batch sizes or, with
    ``num_classes``, labels out of range. Suspicious-only findings are warnings."""
    __tracebackhide__ = True
    from torchdoctor.validators import check_batch

    try:
        check_batch(batch, num_classes=num_classes, reference=reference)
    except DiagnosisError as exc:
        _from_diagnosis(exc)


# ---------------------------------------------------------------- assert_eval_deterministic


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


_DETERMINISM_HINT = ("use nn.Dropout modules (model.eval() switches them off) or pass "
                     "training=self.training to F.dropout; guard other random operations "
                     "(torch.rand*, noise) with `if self.training:`")


def _divergence(model: nn.Module, first: list[_Call], second: list[_Call], atol: float,
                rtol: float) -> Finding | None:
    """The first module call whose outputs differ between the runs, explained."""
    for a, b in zip(first, second):
        if a.qualname != b.qualname:
            message = (f"the two eval-mode runs called different modules "
                       f"({a.qualname or '<model>'} vs {b.qualname or '<model>'}): "
                       "forward() branches on random numbers")
            return _error("eval-determinism", message, a.qualname or "<model>",
                          _DETERMINISM_HINT)
        if _same(a.outputs, b.outputs, atol, rtol):
            continue
        info = module_info(a.qualname, a.module).describe()
        if _same(a.inputs, b.inputs, atol, rtol):
            message = (f"{info} returns different outputs for identical inputs in eval "
                       "mode: its forward() draws random numbers regardless of "
                       "self.training")
            return _error("eval-determinism", message, info, _DETERMINISM_HINT)
        parent = a.qualname.rpartition(".")[0]
        where = module_info(parent, model.get_submodule(parent)).describe()
        message = (f"the input of {info} differs between two eval-mode runs although every "
                   f"module before it returned the same output: the forward() code of "
                   f"{where} draws random numbers (e.g. F.dropout without "
                   "training=self.training)")
        return _error("eval-determinism", message, where, _DETERMINISM_HINT)
    return None


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
    _fail("two eval-mode forward passes on the same input gave different outputs",
          [finding] if finding else [], _max_difference(out1, out2))


def _max_difference(out1: Any, out2: Any) -> str:
    a = next(iter_tensors(out1), None)
    b = next(iter_tensors(out2), None)
    if a is None or b is None or a.shape != b.shape:
        return ""
    diff = (a.double() - b.double()).abs().nan_to_num(0.0)
    return f"largest difference in the model output: {float(diff.max()):.4g}"


# ---------------------------------------------------------------- whole-model diagnosis


def assert_report_ok(report: Report, *, strict: bool = False) -> Report:
    """Fail when ``report`` has an error finding (with ``strict``, a warning too) or a
    check crashed; the message is the full report. Returns the report."""
    __tracebackhide__ = True
    levels = (Severity.ERROR, Severity.WARNING) if strict else (Severity.ERROR,)
    bad = [f for f in report.findings if f.severity in levels]
    crashed = [r for r in report.checks if r.outcome is Outcome.CRASHED]
    if not bad and not crashed:
        return report
    what = [f"{len(bad)} finding(s)"] if bad else []
    what += [f"{len(crashed)} crashed check(s)"] if crashed else []
    raise TorchDoctorAssertionError(f"torchdoctor found problems in {report.target}: "
                                    f"{', '.join(what)}", details=render_text(report))


def assert_healthy(model: nn.Module, *, select: Sequence[str] | None = None,
                   ignore: Sequence[str] | None = None, batch: Any = None,
                   loss_fn: LossFn | None = None,
                   optimizer_factory: OptimizerFactory | None = None,
                   options: CheckOptions | None = None, strict: bool = False,
                   name: str = "model") -> Report:
    """Run torchdoctor's model checks on copies of ``model`` and fail on any error
    finding (with ``strict``, on warnings too) or crashed check.

    ``batch``/``loss_fn``/``optimizer_factory`` adapt the checks to a model that is not
    a FashionMNIST classifier (defaults: a FashionMNIST batch of 64, CrossEntropyLoss,
    Adam 1e-3). ``select``/``ignore`` take check ids. Returns the report.
    """
    __tracebackhide__ = True
    from torchdoctor.runner import diagnose_model

    report = diagnose_model(model, batch=batch, loss_fn=loss_fn,
                            optimizer_factory=optimizer_factory, options=options,
                            select=select, ignore=ignore, name=name)
    return assert_report_ok(report, strict=strict)


# ---------------------------------------------------------------- assertion explanations


def explain_comparison(op: str, left: Any, right: Any) -> list[str] | None:
    """Lines explaining a failed comparison of tensors or ``torch.Size`` objects (for
    pytest's ``pytest_assertrepr_compare``), or None for other operands."""
    if isinstance(left, torch.Size) or isinstance(right, torch.Size):
        return _explain_shapes(op, left, right)
    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        return _explain_tensors(op, left, right)
    return None


def _as_shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, (torch.Size, tuple, list)) and all(
            isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _explain_shapes(op: str, left: Any, right: Any) -> list[str] | None:
    a, b = _as_shape(left), _as_shape(right)
    if a is None or b is None:
        return None
    lines = [f"shape {a} {op} {b}"]
    if len(a) != len(b):
        lines.append(f"number of dimensions differs: {len(a)} != {len(b)}")
    lines.extend(f"dim {i}: {x} != {y}" for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return lines


def _brief(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() == 1 and value.device.type != "meta":
            return f"tensor({value.item()!r})"
        return f"tensor of shape {tuple(value.shape)}"
    return " ".join(repr(value).split())[:60]


def _describe_operand(side: str, value: Any) -> str:
    if not isinstance(value, torch.Tensor):
        return f"{side}: {_brief(value)} ({type(value).__name__})"
    text = (f"{side}: shape {tuple(value.shape)}, dtype {str(value.dtype)[6:]}, "
            f"device {value.device}")
    if (value.is_floating_point() or value.is_complex()) and value.device.type != "meta":
        nan = int(torch.isnan(value).sum())
        text += f", {nan} NaN" if nan else ""
    return text


def _explain_tensors(op: str, left: Any, right: Any) -> list[str]:
    lines = [f"{_brief(left)} {op} {_brief(right)}",
             _describe_operand("left", left), _describe_operand("right", right)]
    try:
        a = left if isinstance(left, torch.Tensor) else torch.as_tensor(left)
        b = right if isinstance(right, torch.Tensor) else torch.as_tensor(right)
    except (TypeError, ValueError, RuntimeError):  # the other operand is not numeric
        return lines
    if a.device != b.device or "meta" in (a.device.type, b.device.type):
        return lines
    try:
        diff = (a.detach().double() - b.detach().double()).abs()
    except RuntimeError as exc:  # shapes that do not broadcast
        return [*lines, f"cannot compare element-wise: {str(exc).splitlines()[0]}"]
    finite = diff[torch.isfinite(diff)]
    if finite.numel():
        lines.append(f"maximum difference: {float(finite.max()):.6g}")
    return lines
