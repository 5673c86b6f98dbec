"""Removable hook sets for the user's own training code: shapes, non-finite values and
activation statistics, cheap enough to leave on.

Every hook set is a context manager. It keeps each hook handle in one list and removes
them all in ``__exit__`` (also when the block raised), so the user's model is left as it
was: no attribute is set on any module, and no tensor or autograd graph is kept alive;
records hold :class:`~torchdoctor.observations.TensorSummary` objects, plain numbers,
or small per-unit flag tensors owned by the recorder::

    with ShapeTracer(model) as shapes:
        model(inputs)
    print(shapes.table())

    with NonFiniteTracer(model) as nan:
        loss_fn(model(inputs), targets).backward()
    if nan.found:
        print(nan.first_output, nan.first_gradient)

    report = localize_nonfinite(model, inputs, loss_fn, targets)   # replays on a copy
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from torchdoctor.errors import NonFiniteError
from torchdoctor.findings import Finding, Severity
from torchdoctor.observations import ModuleCall, ModuleInfo, TensorSummary
from torchdoctor.tensors import iter_tensors, summarize

#: check id of the findings made from non-finite values (the nan-loss check's id)
NONFINITE_CHECK_ID = "nan-loss"


# ---------------------------------------------------------------- shared helpers


def module_info(qualname: str, module: nn.Module) -> ModuleInfo:
    """The :class:`ModuleInfo` of ``module`` under its qualified name."""
    return ModuleInfo(qualname, type(module).__name__, module.extra_repr())


def shape_summary(tensor: torch.Tensor) -> TensorSummary:
    """Shape, dtype and device only: no statistics, so no device synchronisation."""
    return TensorSummary(tuple(int(s) for s in tensor.shape), str(tensor.dtype),
                         str(tensor.device))


def shape_summaries(value: Any) -> tuple[TensorSummary, ...]:
    """Cheap summaries of every tensor in a nested value (non-tensors are skipped)."""
    return tuple(shape_summary(t) for t in iter_tensors(value))


def _all_finite(value: Any) -> bool:
    """Whether every floating tensor in a nested value is free of NaN/inf."""
    return all(bool(torch.isfinite(t).all()) for t in iter_tensors(value)
               if t.is_floating_point() and t.device.type != "meta")


def _first_nonfinite(value: Any) -> torch.Tensor | None:
    return next((t for t in iter_tensors(value) if t.is_floating_point()
                 and t.device.type != "meta" and not bool(torch.isfinite(t).all())), None)


def _inputs(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> tuple[Any, ...]:
    return (*args, *(kwargs or {}).values())


class HookSet:
    """Base of the hook sets: owns the handles and removes them all on exit.

    Subclasses implement :meth:`_install` (calling :meth:`_keep` on every handle) and
    may override :meth:`_reset` (called on enter) and :meth:`_restore` (on exit).
    A hook set may be entered again after it exited; records start afresh.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._handles: list[RemovableHandle] = []
        self._active = False

    def __enter__(self) -> Any:
        if self._active:
            raise RuntimeError(f"{type(self).__name__} is already active")
        self._reset()
        self._active = True
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    @property
    def active(self) -> bool:
        """Whether the hooks are installed (inside the ``with`` block)."""
        return self._active

    def _keep(self, handle: RemovableHandle) -> None:
        self._handles.append(handle)

    def _remove(self) -> None:
        handles, self._handles = self._handles, []
        try:
            for handle in reversed(handles):
                handle.remove()
        finally:
            self._active = False
            self._restore()

    def _install(self) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        """Clear the records of an earlier ``with`` block."""

    def _restore(self) -> None:
        """Undo what installing changed beyond the hook dictionaries."""


# ---------------------------------------------------------------- ShapeTracer


@dataclass(frozen=True)
class ShapeRecord:
    """One module call: its position in execution order (calls are numbered when they
    start, so a parent comes before its children), nesting depth, and the summaries
    of the tensors it received and returned. ``raised`` marks a call that raised."""

    index: int
    qualname: str
    type_name: str
    depth: int
    inputs: tuple[TensorSummary, ...] = ()
    outputs: tuple[TensorSummary, ...] = ()
    detail: str = ""
    raised: bool = False

    @property
    def module(self) -> ModuleInfo:
        """The called module as a :class:`ModuleInfo`."""
        return ModuleInfo(self.qualname, self.type_name, self.detail)


@dataclass
class _Frame:
    module_id: int
    index: int
    call: ModuleCall


class ShapeTracer(HookSet):
    """Record every module call's input and output shapes, dtypes and devices.

    Tuple, list and dict outputs and keyword arguments are handled; non-tensor
    arguments are skipped. A module called twice appears twice. When a forward raises,
    :attr:`failed_at` names the innermost module that was executing (found with a
    pre-hook/hook stack; the hook is registered with ``always_call=True`` so it also
    runs while the exception propagates) and :attr:`failed_stack` all of them,
    outermost first. At most ``max_records`` calls are kept (the rest are counted in
    :attr:`dropped`) so the tracer can stay on for a whole training run.
    """

    def __init__(self, model: nn.Module, *, max_records: int = 10_000) -> None:
        super().__init__(model)
        self.max_records = max_records
        self._reset()

    def _reset(self) -> None:
        self.records: list[ShapeRecord] = []
        self.dropped = 0
        self.failed_at: ModuleCall | None = None
        self.failed_stack: list[ModuleCall] = []
        self.failure = ""
        self._stack: list[_Frame] = []
        self._next_index = 0
        self._failure_recorded = False

    def _install(self) -> None:
        for qualname, module in self._model.named_modules():
            info = module_info(qualname, module)
            self._keep(module.register_forward_pre_hook(self._pre_hook(info),
                                                        with_kwargs=True))
            self._keep(module.register_forward_hook(self._post_hook(), always_call=True))

    def _pre_hook(self, info: ModuleInfo) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs = shape_summaries(_inputs(args, kwargs))
            index = self._next_index
            self._next_index += 1
            self._stack.append(_Frame(id(module), index, ModuleCall(info, inputs)))
            if len(self.records) < self.max_records:
                self.records.append(ShapeRecord(index, info.qualname, info.type_name,
                                                len(self._stack) - 1, inputs,
                                                detail=info.detail))
            else:
                self.dropped += 1
        return hook

    def _post_hook(self) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not self._stack or self._stack[-1].module_id != id(module):
                return  # an earlier pre-hook raised before ours ran
            raised = output is None and sys.exc_info()[1] is not None
            if raised:
                self._note_failure(sys.exc_info()[1])
            frame = self._stack.pop()
            self._finish_record(frame.index, () if raised else shape_summaries(output),
                                raised)
            if not self._stack:
                self._failure_recorded = False  # the next exception is a new failure
        return hook

    def _note_failure(self, exc: BaseException | None) -> None:
        # Only the innermost module (the first hook to see the exception) records it.
        if self._failure_recorded:
            return
        self._failure_recorded = True
        self.failed_stack = [frame.call for frame in self._stack]
        self.failed_at = self.failed_stack[-1]
        self.failure = f"{type(exc).__name__}: {exc}"

    def _finish_record(self, index: int, outputs: tuple[TensorSummary, ...],
                       raised: bool) -> None:
        # records are the first max_records calls, so a call's index is its position
        if index < len(self.records):
            self.records[index] = dataclasses.replace(self.records[index],
                                                      outputs=outputs, raised=raised)

    def table(self, fmt: str = "table") -> str:
        """The calls as a table (``table`` or ``markdown``), nested names indented
        with dots (tabulate strips leading spaces)."""
        from torchdoctor.report import table

        rows = [[r.index, ". " * r.depth + (r.qualname or "<model>"), r.type_name,
                 _shapes(r.inputs), "raised" if r.raised else _shapes(r.outputs),
                 _kinds(r.inputs + r.outputs)] for r in self.records]
        return table(rows, ["#", "module", "type", "input shapes", "output shapes",
                            "dtype / device"], fmt)


def _shapes(summaries: tuple[TensorSummary, ...]) -> str:
    return ", ".join(str(tuple(s.shape)) for s in summaries) or "-"


def _kinds(summaries: tuple[TensorSummary, ...]) -> str:
    kinds = dict.fromkeys(f"{s.dtype.replace('torch.', '')} {s.device}" for s in summaries)
    return ", ".join(kinds) or "-"


# ---------------------------------------------------------------- NonFiniteTracer


@dataclass(frozen=True)
class NonFiniteHit:
    """Where a NaN/inf first appeared.

    For a forward output: ``qualname`` is the module's, ``inputs_finite`` says whether
    the module's inputs were finite (True: this module made the NaN; False: it received
    it). For a gradient: ``qualname`` is the parameter's (``fc1.weight``), ``module``
    its owner, and ``inputs_finite`` whether the parameter's own value was finite.
    ``summary`` describes the non-finite tensor.
    """

    qualname: str
    module: ModuleInfo
    inputs_finite: bool
    summary: TensorSummary

    def describe(self) -> str:
        """``fc2 (Linear, ...) produced NaN/inf from finite inputs``-style text."""
        return self.module.describe()


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
            self.model_inputs_finite = _all_finite(args)

    def _inplace_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.first_output is None:
            self._inplace_inputs_finite[id(module)] = _all_finite(args)

    def _output_hook(self, qualname: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self.first_output is not None:
                return
            bad = _first_nonfinite(output)
            if bad is None:
                return
            inputs_finite = self._inplace_inputs_finite.pop(id(module), None)
            if inputs_finite is None:
                inputs_finite = _all_finite(args)
            self.first_output = NonFiniteHit(qualname, module_info(qualname, module),
                                             inputs_finite, summarize(bad))
        return hook

    def _gradient_hook(self, name: str, param: torch.Tensor) -> Callable[..., None]:
        owner_name = name.rpartition(".")[0]
        owner = self._model.get_submodule(owner_name)
        info = module_info(owner_name, owner)

        def hook(grad: torch.Tensor) -> None:
            if self.first_gradient is None and not bool(torch.isfinite(grad).all()):
                value_finite = bool(torch.isfinite(param.detach()).all())
                self.first_gradient = NonFiniteHit(name, info, value_finite, summarize(grad))
        return hook

    def findings(self) -> list[Finding]:
        """The first cause as an error finding (check id ``nan-loss``): the output hit
        when there is one (gradients then go non-finite as a consequence), else the
        gradient hit."""
        if self.first_output is not None:
            return [_output_finding(self.first_output, self.model_inputs_finite)]
        if self.first_gradient is not None:
            return [_gradient_finding(self.first_gradient)]
        return []

    def raise_if_found(self) -> None:
        """Raise :class:`~torchdoctor.errors.NonFiniteError` when a NaN/inf was seen."""
        found = self.findings()
        if found:
            raise NonFiniteError(_join(found), found)


def _output_finding(hit: NonFiniteHit, model_inputs_finite: bool | None) -> Finding:
    where = hit.module.describe()
    if hit.inputs_finite:
        message = (f"{where} produced NaN/inf (output {hit.summary.describe()}) from finite "
                   "inputs")
        hint = ("look at this module's computation: a division by zero, log/sqrt of "
                "values <= 0, exp overflow, or weights that already hold NaN/inf")
    elif model_inputs_finite is False:
        message = f"the model's inputs already hold NaN/inf (first seen in {where})"
        hint = "check the data: torchdoctor.validators.check_batch(batch)"
    else:
        parent = hit.qualname.rpartition(".")[0] or "<model>"
        message = (f"{where} received NaN/inf: it arose in code between modules, "
                   f"in the forward of {parent}")
        hint = f"look at the tensor operations in {parent}.forward before {hit.qualname}"
    return Finding(NONFINITE_CHECK_ID, Severity.ERROR, message, hit.module.describe(), hint)


def _gradient_finding(hit: NonFiniteHit) -> Finding:
    if not hit.inputs_finite:
        message = f"parameter {hit.qualname} itself holds NaN/inf, and so does its gradient"
        hint = "an earlier optimizer step broke it: lower the learning rate, clip gradients"
    else:
        message = f"the gradient of {hit.qualname} holds NaN/inf ({hit.summary.describe()})"
        hint = ("find the backward op with localize_nonfinite(..., anomaly=True); clip "
                "gradients (torch.nn.utils.clip_grad_norm_) or lower the learning rate")
    return Finding(NONFINITE_CHECK_ID, Severity.ERROR, message, hit.qualname, hint)


def _join(found: list[Finding]) -> str:
    return "; ".join(f"{f.message} (fix: {f.hint})" for f in found)


# ---------------------------------------------------------------- localize_nonfinite


@dataclass(frozen=True)
class NonFiniteReport:
    """What one replayed training step (on a copy of the model) showed.

    ``loss_is_first`` is True when the model's output was finite but the loss was not:
    the loss function itself made the NaN (``log(0)``, a division by zero...).
    ``backward_op`` names the autograd function that first returned NaN (only with
    ``anomaly=True``); ``error`` holds any other exception the replay raised.
    """

    first_output: NonFiniteHit | None
    first_gradient: NonFiniteHit | None
    inputs_finite: bool
    output: TensorSummary | None = None
    loss: float | None = None
    loss_finite: bool | None = None
    backward_op: str = ""
    anomaly: str = ""
    error: str = ""
    findings: list[Finding] = field(default_factory=list)

    @property
    def output_finite(self) -> bool:
        """Whether the model's output was free of NaN/inf."""
        return self.output is not None and self.output.finite

    @property
    def loss_is_first(self) -> bool:
        """Finite model output but a non-finite loss: the loss function is at fault."""
        return self.output_finite and self.loss_finite is False

    @property
    def found(self) -> bool:
        """Whether anything went non-finite in the replay."""
        return bool(self.first_output or self.first_gradient or self.loss_finite is False
                    or not self.inputs_finite or self.backward_op)

    @property
    def kind(self) -> str:
        """``input``, ``activation``, ``loss``, ``gradient`` or ``none``: what went
        non-finite first."""
        if not self.inputs_finite:
            return "input"
        if self.first_output is not None:
            return "activation"
        if self.loss_is_first:
            return "loss"
        if self.first_gradient is not None or self.backward_op:
            return "gradient"
        return "none"


_ANOMALY_OP = re.compile(r"Function '(\w+)' returned nan values")


def localize_nonfinite(model: nn.Module, inputs: Any, loss_fn: Callable[..., Any] | None = None,
                       targets: Any = None, *, anomaly: bool = False) -> NonFiniteReport:
    """Replay one forward (and backward, when ``loss_fn`` is given) on a deep copy of
    ``model`` with a :class:`NonFiniteTracer` on, and say what first went non-finite.

    ``inputs`` is passed as ``model(inputs)`` (a tuple is unpacked). Inputs and targets
    are cloned, the RNG is forked (dropout draws the same masks, the user's RNG stream
    is untouched) and the user's model, inputs and grad mode are left as they were.
    With ``anomaly=True`` the replay runs under ``torch.autograd.detect_anomaly`` to
    name the backward op that returned NaN (the previous anomaly mode is restored).
    """
    replica = _strip_own_hooks(copy.deepcopy(model))
    inputs, targets = _clone(inputs), _clone(targets)
    devices = sorted({p.device.index or 0 for p in replica.parameters()
                      if p.device.type == "cuda"})
    state: dict[str, Any] = {"inputs_finite": _all_finite(inputs)}
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        with NonFiniteTracer(replica) as tracer, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anomaly mode warns on every use
            _replay(replica, inputs, loss_fn, targets, anomaly, state)
    report = NonFiniteReport(tracer.first_output, tracer.first_gradient, **state)
    return dataclasses.replace(report, findings=_report_findings(report, tracer))


def _replay(model: nn.Module, inputs: Any, loss_fn: Callable[..., Any] | None, targets: Any,
            anomaly: bool, state: dict[str, Any]) -> None:
    """Run the step, filling ``state`` with what the report needs."""
    try:
        with torch.autograd.set_detect_anomaly(anomaly, check_nan=True):
            output = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
            first = _first_nonfinite(output)
            summary_of = first if first is not None else next(iter_tensors(output), None)
            state["output"] = summarize(summary_of) if summary_of is not None else None
            if loss_fn is None:
                return
            loss = loss_fn(output, targets)
            state["loss"] = float(loss.detach().float().mean())
            state["loss_finite"] = bool(torch.isfinite(loss.detach()).all())
            if loss.requires_grad:  # reduction="none": backward through the mean
                (loss if loss.numel() == 1 else loss.mean()).backward()
    except Exception as exc:  # a diagnostic: report what the replay raised, never crash
        match = _ANOMALY_OP.search(str(exc))
        if anomaly and match:
            state["backward_op"], state["anomaly"] = match.group(1), str(exc)
        else:
            state["error"] = f"{type(exc).__name__}: {exc}"


def _report_findings(report: NonFiniteReport, tracer: NonFiniteTracer) -> list[Finding]:
    """The finding for what went non-finite first (what follows from it is not repeated)."""
    kind = report.kind
    if kind == "input":
        return [Finding(NONFINITE_CHECK_ID, Severity.ERROR, "the inputs hold NaN/inf",
                        "inputs", "check the data: torchdoctor.validators.check_batch")]
    if kind == "activation":
        return tracer.findings()
    if kind == "loss":
        return [Finding(
            NONFINITE_CHECK_ID, Severity.ERROR,
            f"the model's output is finite but the loss is {report.loss}: the loss "
            "function made the NaN/inf", "loss",
            "use a numerically stable loss (CrossEntropyLoss/BCEWithLogitsLoss on logits "
            "instead of log(softmax) or log(sigmoid)), or clamp before log: x.clamp_min(1e-8)")]
    found = [] if report.first_gradient is None else [_gradient_finding(report.first_gradient)]
    if report.backward_op:
        found.append(Finding(NONFINITE_CHECK_ID, Severity.ERROR,
                             f"backward op {report.backward_op} returned NaN", "backward",
                             "the op's derivative is infinite at these values (sqrt/log "
                             "at 0, division by zero, the torch.where trap): add an epsilon "
                             "or clamp the input"))
    return found


_EXTRA_HOOK_DICTS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                     "_forward_pre_hooks_with_kwargs")


def _strip_own_hooks(model: nn.Module) -> nn.Module:
    """A deep copy made while a hook set is active carries that set's module hooks (the
    functions are shared, not copied): drop them so the replay does not feed the
    user's own tracers. Other hooks (weight_norm's...) stay."""
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, fn in hooks.items()
                        if getattr(fn, "__module__", None) == __name__]:
                del hooks[key]
                for extra in _EXTRA_HOOK_DICTS:
                    getattr(module, extra).pop(key, None)
    return model


def _clone(value: Any) -> Any:
    """Detached copies of the tensors in a nested value (so in-place ops in the
    replayed forward cannot change the user's data)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- ActivationStats

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

