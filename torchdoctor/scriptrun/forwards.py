"""The forward recorder of a script run: which root models the script calls, each
forward's inputs and output (summaries), module losses, and the module stack at an error.

Fed by torch's global module forward hooks (installed by
:class:`~torchdoctor.scriptrun.instrument.Instrumentation`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchdoctor.diagnoses.eval_mode import mode_sensitive
from torchdoctor.scriptrun.budget import PhaseTimer
from torchdoctor.scriptrun.callsite import user_callsite
from torchdoctor.scriptrun.observations import (
    ForwardRecord,
    ModuleCall,
    ModuleInfo,
    ObservedModel,
    ScriptRun,
)
from torchdoctor.scriptrun.patches import RunLink
from torchdoctor.scriptrun.progress import RunProgress, bookkeeping
from torchdoctor.tensors import deepcopy_module, first_tensor, iter_tensors, shape_only, summarize

_MAX_INPUTS = 4  # tensor inputs summarised per forward

#: called with (loss name, args, output, options, the loss module) when a loss module
#: finishes outside a model
LossSink = Callable[[str, tuple[Any, ...], Any, dict[str, str], nn.Module], None]


class ForwardRecorder:
    """Records the forwards of root models (those with parameters, called outside any
    other module) and the calls of loss modules."""

    def __init__(self, run: ScriptRun, progress: RunProgress, timer: PhaseTimer,
                 on_loss: LossSink, link: RunLink[Any]) -> None:
        self.run = run
        self.progress = progress
        self.timer = timer
        self.models: list[nn.Module] = []
        self.snapshots: list[nn.Module] = []
        self._on_loss = on_loss
        self._link = link
        self._model_index: dict[int, int] = {}
        self._param_names: dict[int, str] = {}
        self._qualnames: dict[int, str] = {}
        self._stack: list[tuple[nn.Module, tuple[Any, ...], float]] = []
        self._error_stack: tuple[BaseException, list[ModuleCall]] | None = None
        self._last_inputs: dict[int, tuple[Any, ...]] = {}
        self._open_forwards: dict[int, ForwardRecord] = {}

    @property
    def inside_module(self) -> bool:
        """Whether a module's forward (or torchdoctor's own replay) is running now."""
        return bool(self._stack) or self.progress.paused

    def before(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """The global forward pre-hook."""
        if self.progress.paused:
            return
        if not self._stack and not _is_loss(module):
            index = self._observe_model(module)
            if index is not None:
                self._open_forward(index, module, args)
        self._stack.append((module, args, time.perf_counter()))

    def after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """The global forward hook (``always_call``: runs when the forward raised too)."""
        if self.progress.paused:
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
        if _is_loss(module) and failing is None and len(args) >= 1:
            self._on_loss(type(module).__name__, args, output, _loss_options(module), module)
        index = self._model_index.get(id(module))
        if index is not None and index in self._open_forwards:
            self._close_forward(index, output, failing is None)
            self.timer.add("forward", started)

    def error_stack_for(self, exc: BaseException) -> list[ModuleCall]:
        """The modules that were executing when ``exc`` was raised (outermost first)."""
        if self._error_stack is not None and self._error_stack[0] is exc:
            return self._error_stack[1]
        return []

    def last_inputs(self, model_index: int) -> tuple[Any, ...] | None:
        """The arguments of the latest forward of model ``model_index``."""
        return self._last_inputs.get(model_index)

    def model_index(self, module: nn.Module) -> int | None:
        """The index of ``module`` among the root models, or None."""
        return self._model_index.get(id(module))

    def param_name(self, param: torch.Tensor) -> str:
        """``fc1.weight`` (prefixed by the model's type for the second model on)."""
        name = self._param_names.get(id(param))
        return name or _global_name(param) or f"parameter{tuple(param.shape)}"

    def close(self) -> None:
        """Drop the references to the user's tensors (the run is over)."""
        self._last_inputs.clear()
        self._stack.clear()
        self._open_forwards.clear()
        self._error_stack = None  # its exception's traceback holds the script's frames

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

    @bookkeeping
    def _open_forward(self, index: int, module: nn.Module, args: tuple[Any, ...]) -> None:
        tensors = [t for t in iter_tensors(args)][:_MAX_INPUTS]
        describe = summarize if self.progress.detailed(self.run.forwards) else shape_only
        record = ForwardRecord(
            index=len(self.run.forwards), model=index, training=module.training,
            grad_enabled=torch.is_grad_enabled(), step_count=self.progress.applied_steps,
            location=user_callsite(), inputs=tuple(describe(t) for t in tensors),
            loader_pass=self.progress.pass_index)
        self.run.forwards.append(record)
        self._open_forwards[index] = record
        self._last_inputs[index] = args

    @bookkeeping
    def _close_forward(self, index: int, output: Any, succeeded: bool) -> None:
        record = self._open_forwards.pop(index)
        out = first_tensor(output) if succeeded else None
        if out is None:
            return
        record.output = summarize(out) if self.progress.detailed(self.run.forwards[:-1]) \
            else shape_only(out)
        if out.requires_grad:
            # fires only if a backward pass really flows through this output, and only
            # during the run: the hook stays on the user's tensor after it
            link = self._link
            out.register_hook(lambda grad: _mark_followed(record, link))

    def _describe_stack(self) -> list[ModuleCall]:
        calls = []
        for module, args, _ in self._stack:
            tensors = [t for t in iter_tensors(args)][:_MAX_INPUTS]
            info = ModuleInfo(self._qualnames.get(id(module), ""), type(module).__name__,
                              module.extra_repr())
            calls.append(ModuleCall(info, tuple(summarize(t) for t in tensors)))
        return calls


def _global_name(tensor: torch.Tensor) -> str | None:
    """The script's global variable holding ``tensor`` (raw-tensor programs: ``w``)."""
    main = sys.modules.get("__main__")
    return next((k for k, v in vars(main).items() if v is tensor and not k.startswith("_")),
                None) if main is not None else None


def _is_loss(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.loss._Loss)


def _loss_options(module: nn.Module) -> dict[str, str]:
    keys = ("reduction", "ignore_index", "label_smoothing")
    return {k: str(getattr(module, k)) for k in keys if hasattr(module, k)}


def _mark_followed(record: ForwardRecord, link: RunLink[Any]) -> None:
    if link.get() is not None:
        record.backward_followed = True
