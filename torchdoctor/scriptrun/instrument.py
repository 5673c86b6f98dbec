"""Instrumentation of a user's training script, for one script-mode run.

:class:`Instrumentation` is a context manager that, while it is active, observes every
model forward, loss, ``backward()``, ``optimizer.step()``/``zero_grad()`` and DataLoader
pass in the process, and enforces the fast-dev-run budget:

* each DataLoader pass yields at most ``limit_batches`` batches;
* after ``max_steps`` applied optimizer steps, further steps are skipped, and after as
  many skipped steps again the run is stopped (so a 10-epoch script shows both its
  training and its evaluation phases within seconds, and an endless loop ends).

The budget itself lives in :mod:`torchdoctor.budget`.

It uses torch's global module and optimizer hooks and patches a few class attributes
(DataLoader.__iter__, Tensor.backward, the zero_grad methods, functional losses); all
are removed on exit, whatever happened. Observations go into a
:class:`~torchdoctor.observations.ScriptRun`; no tensor outlives the run.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchdoctor.diagnoses.eval_mode import mode_sensitive
from torchdoctor.diagnoses.gradcarry import GradCarryDetector
from torchdoctor.diagnoses.manualgrad import ManualUpdateDetector
from torchdoctor.diagnoses.nonfinite import all_finite
from torchdoctor.engine.context import CheckOptions
from torchdoctor.scriptrun.budget import LimitedIterator, PhaseTimer, StepBudget
from torchdoctor.scriptrun.callsite import user_callsite
from torchdoctor.scriptrun.observations import (
    BackwardRecord,
    ForwardRecord,
    LossRecord,
    ModuleCall,
    ModuleInfo,
    NonFiniteRecord,
    ObservedModel,
    ScriptRun,
    StepRecord,
)
from torchdoctor.scriptrun.tracing import ScriptTracing, start_tracing
from torchdoctor.tensors import (
    deepcopy_module,
    first_tensor,
    iter_tensors,
    shape_only,
    summarize,
)

#: functional losses observed when called outside a loss module
FUNCTIONAL_LOSSES = (
    "cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div",
)

_MAX_INPUTS = 4  # tensor inputs summarised per forward
_DETAILED_PER_PASS = 2  # forwards/losses per DataLoader pass summarised with statistics


_F = TypeVar("_F", bound=Callable[..., Any])


def _bookkeeping(method: _F) -> _F:
    """Label torchdoctor's own work for torch.profiler (only while one is active), so
    `torchdoctor profile` can leave the doctor's summaries out of the user's top ops."""

    @functools.wraps(method)
    def labelled(*args: Any, **kwargs: Any) -> Any:
        if not torch.autograd.profiler._is_profiler_enabled:
            return method(*args, **kwargs)
        with torch.profiler.record_function("torchdoctor.instrument"):
            return method(*args, **kwargs)

    return labelled  # type: ignore[return-value]


class Instrumentation:
    """Observe one script run; see the module docstring."""

    def __init__(self, options: CheckOptions, run: ScriptRun) -> None:
        self.options = options
        self.run = run
        self.models: list[nn.Module] = []
        self.snapshots: list[nn.Module] = []
        self.detector = GradCarryDetector(sync=True, name_of=self._param_name,
                                          confirm_at_step=True)
        self.manual = ManualUpdateDetector(self.detector.owns, self._param_name)
        self.timer = PhaseTimer(run.phase_seconds)
        self.budget = StepBudget(options.max_steps, self._record_skipped_step)
        self._model_index: dict[int, int] = {}
        self._param_names: dict[int, str] = {}
        self._qualnames: dict[int, str] = {}
        self._stack: list[tuple[nn.Module, tuple[Any, ...], float]] = []
        self._error_stack: tuple[BaseException, list[ModuleCall]] | None = None
        self._last_inputs: dict[int, tuple[Any, ...]] = {}
        self._open_forwards: dict[int, ForwardRecord] = {}
        self._optimizers: dict[int, int] = {}
        self._handles: list[Any] = []
        self._patches: list[tuple[Any, str, Any]] = []
        self._pass_index = -1
        self._step_started = 0.0
        self._paused = False  # set while torchdoctor itself runs a model (replays)
        self._tracing: ScriptTracing | None = None

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> Instrumentation:
        from torch.nn.modules import module as module_mod
        from torch.optim import optimizer as optimizer_mod

        self._handles += [
            module_mod.register_module_forward_pre_hook(self._forward_pre),
            module_mod.register_module_forward_hook(self._forward_post, always_call=True),
            optimizer_mod.register_optimizer_step_pre_hook(self._step_pre),
            optimizer_mod.register_optimizer_step_post_hook(self._step_post),
        ]
        self._patch(DataLoader, "__iter__", self._wrap_loader_iter(DataLoader.__iter__))
        self._patch(torch.Tensor, "backward", self._wrap_backward(torch.Tensor.backward))
        self._patch(torch.optim.Optimizer, "zero_grad",
                    self._wrap_zero_grad(torch.optim.Optimizer.zero_grad))
        self._patch(nn.Module, "zero_grad", self._wrap_zero_grad(nn.Module.zero_grad))
        for name in FUNCTIONAL_LOSSES:
            self._patch(nn.functional, name, self._wrap_functional_loss(name))
        self._tracing = start_tracing(self.options, self.run)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._tracing is not None:
            self._tracing.close()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches.clear()
        self.budget.restore()
        self.detector.close()
        self.manual.close()
        self.run.carried_grads = list(self.detector.records) + self.manual.records
        self._last_inputs.clear()

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        self._patches.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def error_stack_for(self, exc: BaseException) -> list[ModuleCall]:
        """The modules that were executing when ``exc`` was raised (outermost first)."""
        if self._error_stack is not None and self._error_stack[0] is exc:
            return self._error_stack[1]
        return []

    # -- models and forwards -----------------------------------------------------
    def _forward_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._paused:
            return
        if not self._stack and not self._is_loss(module):
            index = self._observe_model(module)
            if index is not None:
                self._open_forward(index, module, args)
        self._stack.append((module, args, time.perf_counter()))

    def _forward_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._paused:
            return
        failing = sys.exc_info()[1]
        if failing is not None and (self._error_stack is None
                                    or self._error_stack[0] is not failing):
            self._error_stack = (failing, self._describe_stack())
        if not self._stack or self._stack[-1][0] is not module:
            return
        _, _, started = self._stack.pop()
        if self._stack:
            return
        if self._is_loss(module) and failing is None and len(args) >= 1:
            self._record_loss(type(module).__name__, args, output, self._loss_options(module))
        index = self._model_index.get(id(module))
        if index is not None and index in self._open_forwards:
            self._close_forward(index, output, failing is None)
            self.timer.add("forward", started)

    @staticmethod
    def _is_loss(module: nn.Module) -> bool:
        return isinstance(module, nn.modules.loss._Loss)

    def _observe_model(self, module: nn.Module) -> int | None:
        """Register a root model on first sight (one with parameters)."""
        if id(module) in self._model_index:
            return self._model_index[id(module)]
        params = list(module.named_parameters())
        if not params:
            return None
        index = len(self.models)
        self._model_index[id(module)] = index
        self.models.append(module)
        self.snapshots.append(deepcopy_module(module))  # as built, before any training
        prefix = f"{type(module).__name__}." if index else ""
        self._param_names.update({id(p): prefix + name for name, p in params})
        self._qualnames.update({id(m): name for name, m in module.named_modules()})
        sensitive = [name or "<model>" for name, _ in mode_sensitive(module)]
        self.run.models.append(ObservedModel(
            index=index, type_name=type(module).__name__, location=user_callsite(),
            mode_sensitive=sensitive, parameter_count=sum(p.numel() for _, p in params)))
        return index

    @_bookkeeping
    def _open_forward(self, index: int, module: nn.Module, args: tuple[Any, ...]) -> None:
        tensors = [t for t in iter_tensors(args)][:_MAX_INPUTS]
        describe = summarize if self._detailed(self.run.forwards) else shape_only
        record = ForwardRecord(
            index=len(self.run.forwards), model=index, training=module.training,
            grad_enabled=torch.is_grad_enabled(), step_count=self._applied_steps(),
            location=user_callsite(), inputs=tuple(describe(t) for t in tensors),
            loader_pass=self._pass_index)
        self.run.forwards.append(record)
        self._open_forwards[index] = record
        self._last_inputs[index] = args

    @_bookkeeping
    def _close_forward(self, index: int, output: Any, succeeded: bool) -> None:
        record = self._open_forwards.pop(index)
        out = first_tensor(output) if succeeded else None
        if out is None:
            return
        record.output = summarize(out) if self._detailed(self.run.forwards[:-1]) \
            else shape_only(out)
        if out.requires_grad:
            # fires only if a backward pass really flows through this output
            out.register_hook(lambda grad: _mark_followed(record))

    @_bookkeeping
    def _detailed(self, records: list[Any]) -> bool:
        """Statistics cost kernels: compute them for the first few records of each
        DataLoader pass only (and for everything outside DataLoader passes' bulk)."""
        in_pass = [r for r in records[-(_DETAILED_PER_PASS + 1):]
                   if getattr(r, "loader_pass", self._pass_index) == self._pass_index]
        return len(in_pass) < _DETAILED_PER_PASS or self._pass_index < 0

    def _describe_stack(self) -> list[ModuleCall]:
        calls = []
        for module, args, _ in self._stack:
            tensors = [t for t in iter_tensors(args)][:_MAX_INPUTS]
            info = ModuleInfo(self._qualnames.get(id(module), ""), type(module).__name__,
                              module.extra_repr())
            calls.append(ModuleCall(info, tuple(summarize(t) for t in tensors)))
        return calls

    # -- losses ------------------------------------------------------------------
    def _wrap_functional_loss(self, name: str) -> Callable[..., Any]:
        original = getattr(nn.functional, name)
        instrumentation = self

        def observed_loss(input: Any, target: Any = None, *args: Any, **kwargs: Any) -> Any:
            inside_module = bool(instrumentation._stack) or instrumentation._paused
            output = original(input, target, *args, **kwargs)
            if not inside_module:
                options = {k: str(v) for k, v in kwargs.items() if isinstance(v, (str, int))}
                instrumentation._record_loss(name, (input, target), output, options)
            return output

        observed_loss.__wrapped__ = original  # type: ignore[attr-defined]
        return observed_loss

    @_bookkeeping
    def _record_loss(self, name: str, args: tuple[Any, ...], output: Any,
                     options: dict[str, str]) -> None:
        prediction = args[0]
        target = args[1] if len(args) > 1 else None
        if not isinstance(prediction, torch.Tensor):
            return
        value = None
        if isinstance(output, torch.Tensor) and output.numel() == 1:
            value = float(output.detach())
        describe = summarize if self._detailed(self.run.losses) else shape_only
        self.run.losses.append(LossRecord(
            index=len(self.run.losses), loss=name, prediction=describe(prediction),
            target=describe(target) if isinstance(target, torch.Tensor) else None,
            value=value, step_count=self._applied_steps(), location=user_callsite(),
            options=options, loader_pass=self._pass_index))

    @staticmethod
    def _loss_options(module: nn.Module) -> dict[str, str]:
        keys = ("reduction", "ignore_index", "label_smoothing")
        return {k: str(getattr(module, k)) for k in keys if hasattr(module, k)}

    # -- backward ----------------------------------------------------------------
    def _wrap_backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        instrumentation = self

        def observed_backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            value = float(tensor.detach()) if tensor.numel() == 1 else None
            instrumentation.manual.before_backward(tensor, user_callsite())
            started = time.perf_counter()
            try:
                result = original(tensor, *args, **kwargs)
            finally:
                instrumentation.timer.add("backward", started)
                instrumentation.manual.after_backward(bool(instrumentation._optimizers))
                instrumentation._after_backward(value)
            instrumentation.budget.after_backward(len(instrumentation.run.backwards))
            return result

        return observed_backward

    @_bookkeeping
    def _after_backward(self, value: float | None) -> None:
        finite = value is None or math.isfinite(value)
        bad_grads = self._nonfinite(lambda p: p.grad)
        record = BackwardRecord(index=len(self.run.backwards), value=value, finite=finite,
                                step_count=self._applied_steps(), location=user_callsite(),
                                nonfinite_grads=bad_grads)
        self.run.backwards.append(record)
        if not self.run.nonfinite and (not finite or bad_grads):
            self._localize("loss" if not finite else "gradient",
                           bad_grads[0] if bad_grads else "")

    def _nonfinite(self, read: Callable[[nn.Parameter], torch.Tensor | None]) -> list[str]:
        values = [read(p) for model in self.models for p in model.parameters()]
        if all_finite([v for v in values if v is not None]):
            return []
        names = []
        for model in self.models:
            for param in model.parameters():
                tensor = read(param)
                if tensor is not None and not bool(torch.isfinite(tensor).all()):
                    names.append(self._param_name(param))
        return names

    def _localize(self, kind: str, where: str, lr: float | None = None) -> None:
        """Record the first non-finite value; replay the last forward with per-module
        hooks (on a copy) to find the module that produced it."""
        record = NonFiniteRecord(
            step_count=self._applied_steps(), kind=kind, where=where,
            location=user_callsite(), lr=lr,
            loss_history=[b.value for b in self.run.backwards[-12:] if b.value is not None])
        self.run.nonfinite.append(record)
        if kind in ("loss", "gradient") and self.run.forwards:
            self._replay(record, self.run.forwards[-1].model)

    def _replay(self, record: NonFiniteRecord, model_index: int) -> None:
        from torchdoctor.diagnoses.nonfinite_replay import replay_forward

        inputs = self._last_inputs.get(model_index)
        if inputs is None:
            return
        self._paused = True
        try:
            hit = replay_forward(self.models[model_index], inputs)
        finally:
            self._paused = False
        if hit is not None:
            record.kind = "activation" if record.kind == "loss" else record.kind
            record.where = record.where or hit.qualname
            record.module = hit.module
            record.detail = "inputs were finite" if hit.inputs_finite else \
                "its inputs were already non-finite"

    # -- optimizer ---------------------------------------------------------------
    def _applied_steps(self) -> int:
        return self.budget.applied

    def _step_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._optimizers.setdefault(id(optimizer), len(self._optimizers))
        self.detector.watch(optimizer)
        self.detector.before_step(optimizer)
        self._step_started = time.perf_counter()

    @_bookkeeping
    def _step_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.timer.add("step", self._step_started)
        location = user_callsite()
        bad = self._nonfinite_params(optimizer)
        lr = _learning_rate(optimizer)
        self.run.steps.append(StepRecord(
            index=len(self.run.steps), optimizer=self._optimizers[id(optimizer)],
            optimizer_type=type(optimizer).__name__, location=location, lr=lr,
            nonfinite_params=bad))
        self.detector.note_step(optimizer, location)
        if bad and not any(r.kind == "parameter" for r in self.run.nonfinite):
            self._localize("parameter", bad[0], lr)
        self.budget.after_step(optimizer)

    def _nonfinite_params(self, optimizer: torch.optim.Optimizer) -> list[str]:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if all_finite(params):
            return []
        return [self._param_name(p) for p in params if not bool(torch.isfinite(p.detach()).all())]

    def _record_skipped_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.run.steps.append(StepRecord(
            index=len(self.run.steps), optimizer=self._optimizers[id(optimizer)],
            optimizer_type=type(optimizer).__name__, location=user_callsite(), skipped=True))

    def _wrap_zero_grad(self, original: Callable[..., Any]) -> Callable[..., Any]:
        detector = self.detector

        def observed_zero_grad(owner: Any, *args: Any, **kwargs: Any) -> Any:
            detector.note_zero_grad(user_callsite(), _params_of(owner))
            return original(owner, *args, **kwargs)

        return observed_zero_grad

    def _param_name(self, param: torch.Tensor) -> str:
        name = self._param_names.get(id(param))
        return name or _global_name(param) or f"parameter{tuple(param.shape)}"

    # -- data --------------------------------------------------------------------
    def _wrap_loader_iter(self, original: Callable[..., Any]) -> Callable[..., Any]:
        instrumentation = self

        def limited_iter(loader: DataLoader) -> Iterator[Any]:
            instrumentation.run.loader_passes += 1
            instrumentation._pass_index += 1
            instrumentation._note_synthetic(loader)
            return LimitedIterator(original(loader), instrumentation.options.limit_batches,
                                   instrumentation._on_fetch)

        return limited_iter


    def _on_fetch(self, started: float) -> None:
        self.timer.add("data", started)
        self.run.batches += 1

    def _note_synthetic(self, loader: DataLoader) -> None:
        """Mark the report when the script trains on torchdoctor's synthetic stand-in."""
        data_module = sys.modules.get("torchdoctor.reference.data")
        if data_module is None:
            return
        try:
            kind = data_module.dataset_kind(loader.dataset)
        except TypeError:
            return
        note = ("the script's data is the synthetic FashionMNIST stand-in (no real data "
                "found): accuracy figures are not FashionMNIST's")
        if kind == "synthetic" and note not in self.run.notes:
            self.run.notes.append(note)


def _global_name(tensor: torch.Tensor) -> str | None:
    """The script's global variable holding ``tensor`` (raw-tensor programs: ``w``)."""
    main = sys.modules.get("__main__")
    return next((k for k, v in vars(main).items() if v is tensor and not k.startswith("_")),
                None) if main is not None else None


def _params_of(owner: Any) -> list[torch.Tensor]:
    """The parameters a ``zero_grad`` of ``owner`` (optimizer or module) clears."""
    if isinstance(owner, torch.optim.Optimizer):
        return [p for group in owner.param_groups for p in group["params"]]
    return list(owner.parameters()) if isinstance(owner, nn.Module) else []


def _mark_followed(record: ForwardRecord) -> None:
    record.backward_followed = True


def _learning_rate(optimizer: torch.optim.Optimizer) -> float | None:
    lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
    if isinstance(lr, torch.Tensor):
        return float(lr)
    return float(lr) if isinstance(lr, (int, float)) else None


def run_script(path: Any, options: CheckOptions, *, argv: list[str] | None = None) -> Any:
    """Run a user's file under instrumentation: see :func:`torchdoctor.script.run_script`."""
    from torchdoctor.scriptrun.script import run_script as run

    return run(path, options, argv=argv)
