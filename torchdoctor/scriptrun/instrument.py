"""Instrumentation of a user's training script, for one script-mode run.

:class:`Instrumentation` is a context manager that, while it is active, observes every
model forward, loss, ``backward()``, ``optimizer.step()``/``zero_grad()``, DataLoader
pass and checkpoint call (``torch.save``/``torch.load``/``load_state_dict``) in the
process, and enforces the fast-dev-run budget of :mod:`~torchdoctor.scriptrun.budget`:
caps per phase (batches per pass, fewer for later passes of a loader, optimizer steps
applied), so a 10-epoch script runs to its end (validation, test, predict, checkpoints)
within seconds, and a safety cap cuts loops no DataLoader bounds.

It uses torch's global module and optimizer hooks and patches a few attributes
(DataLoader.__iter__, Tensor.backward, the zero_grad methods, functional losses,
torch.save/torch.load, Module.load_state_dict). The
parts, one job each: :mod:`~torchdoctor.scriptrun.patches` installs and removes them (all
or nothing), :mod:`~torchdoctor.scriptrun.wrappers` are the replacements (inert once the
run is over), :mod:`~torchdoctor.scriptrun.forwards`, :mod:`~torchdoctor.scriptrun.losses`,
:mod:`~torchdoctor.scriptrun.training` and :mod:`~torchdoctor.scriptrun.nonfinite` record,
:mod:`~torchdoctor.scriptrun.budget` limits. Observations go into a
:class:`~torchdoctor.scriptrun.observations.ScriptRun`; no tensor outlives the run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.optim import optimizer as optimizer_hooks
from torch.utils.data import DataLoader

from torchdoctor.diagnoses.gradcarry import GradCarryDetector
from torchdoctor.diagnoses.manualgrad import ManualUpdateDetector
from torchdoctor.engine.context import CheckOptions
from torchdoctor.scriptrun.budget import LimitedIterator, PassBudget, PhaseTimer, RunBudget
from torchdoctor.scriptrun.callsite import user_callsite
from torchdoctor.scriptrun.directcalls import direct_forward_call, wrap_load
from torchdoctor.scriptrun.forwards import ForwardRecorder
from torchdoctor.scriptrun.gradless import GradlessRecorder
from torchdoctor.scriptrun.keptgraph import KeptGraphWatch
from torchdoctor.scriptrun.losses import FUNCTIONAL_LOSSES, LossRecorder
from torchdoctor.scriptrun.nonfinite import NonFiniteWatch
from torchdoctor.scriptrun.observations import (
    CheckpointRecord,
    CodeLocation,
    LoadRecord,
    ModuleCall,
    PassRecord,
    ScriptRun,
)
from torchdoctor.scriptrun.patches import PatchSet, RunLink
from torchdoctor.scriptrun.progress import RunProgress
from torchdoctor.scriptrun.setuppatches import install_setup_patches
from torchdoctor.scriptrun.setups import SetupRecorder
from torchdoctor.scriptrun.tracing import ScriptTracing, start_tracing
from torchdoctor.scriptrun.training import TrainingRecorder
from torchdoctor.scriptrun.updates import UpdateRecorder
from torchdoctor.scriptrun.wrappers import (
    routed,
    wrap_backward,
    wrap_checkpoint,
    wrap_functional_loss,
    wrap_loader_iter,
    wrap_zero_grad,
)

_SYNTHETIC_NOTE = ("the script's data is the synthetic FashionMNIST stand-in (no real data "
                   "found): accuracy figures are not FashionMNIST's")


class Instrumentation:
    """Observe one script run; see the module docstring."""

    def __init__(self, options: CheckOptions, run: ScriptRun) -> None:
        self.options = options
        self.run = run
        self.timer = PhaseTimer(run.phase_seconds)
        self.budget = RunBudget(options.limit_batches, options.max_steps, self._skipped_step,
                                options.skipped_steps)
        self.progress = RunProgress(self.budget)
        self._link: RunLink[Instrumentation] = RunLink(self)
        self.losses = LossRecorder(run, self.progress)
        self.forwards = ForwardRecorder(run, self.progress, self.timer, self._module_loss,
                                        self._link)
        self.setups = SetupRecorder(self.forwards.last_inputs)
        self.detector = GradCarryDetector(sync=True, name_of=self.forwards.param_name,
                                          confirm_at_step=True)
        self.manual = ManualUpdateDetector(self.detector.owns, self.forwards.param_name)
        self.nonfinite = NonFiniteWatch(run, self.progress, self.forwards)
        self.training = TrainingRecorder(run, self.progress, self.timer, self.detector,
                                         self.nonfinite)
        self.updates = UpdateRecorder(run, self.training.index_of, self.forwards.param_name)
        self.kept_graphs = KeptGraphWatch(run, lambda: self.progress.applied_steps)
        self.gradless = GradlessRecorder(run, lambda: self.forwards.models,
                                         self.forwards.param_name)
        self._patches = PatchSet()
        self._tracing: ScriptTracing | None = None

    @property
    def models(self) -> list[nn.Module]:
        """The root models the script called, in order of their first forward."""
        return self.forwards.models

    @property
    def snapshots(self) -> list[nn.Module]:
        """Deep copies of :attr:`models` taken at their first forward."""
        return self.forwards.snapshots

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> Instrumentation:
        self._patches.install(self._installers())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._link.cut()
        self._patches.undo()  # the op tracing first: it was started last
        self.budget.restore()
        self.detector.close()
        self.manual.close()
        self.run.carried_grads = list(self.detector.records) + self.manual.records
        self.gradless.close()
        self.run.setups = self.setups.finish(self.forwards.models)
        self.forwards.close()

    def _installers(self) -> Iterator[Callable[[PatchSet], None]]:
        """The installing steps, in order; each is undone if a later one fails."""
        link = self._link
        yield lambda p: p.hook(module_hooks.register_module_forward_pre_hook(
            routed("forward_before", link)))
        yield lambda p: p.hook(module_hooks.register_module_forward_hook(
            routed("forward_after", link), always_call=True))
        yield lambda p: p.hook(optimizer_hooks.register_optimizer_step_pre_hook(
            routed("step_before", link)))
        yield lambda p: p.hook(optimizer_hooks.register_optimizer_step_post_hook(
            routed("step_after", link)))
        yield lambda p: p.patch(DataLoader, "__iter__",
                                wrap_loader_iter(DataLoader.__iter__, link))
        yield lambda p: p.patch(torch.Tensor, "backward",
                                wrap_backward(torch.Tensor.backward, link))
        yield lambda p: p.patch(torch.optim.Optimizer, "zero_grad",
                                wrap_zero_grad(torch.optim.Optimizer.zero_grad, link))
        yield lambda p: p.patch(nn.Module, "zero_grad", wrap_zero_grad(nn.Module.zero_grad, link))
        yield lambda p: p.patch(torch, "load", wrap_load(torch.load, link))
        yield lambda p: install_setup_patches(p, link)
        yield lambda p: p.patch(torch, "save", wrap_checkpoint("save", torch.save, link))
        yield lambda p: p.patch(nn.Module, "load_state_dict", wrap_checkpoint(
            "load_state_dict", nn.Module.load_state_dict, link))
        for name in FUNCTIONAL_LOSSES:
            yield lambda p, name=name: p.patch(  # type: ignore[misc]
                nn.functional, name,
                wrap_functional_loss(name, getattr(nn.functional, name), link))
        yield self._start_tracing

    def _start_tracing(self, patches: PatchSet) -> None:
        self._tracing = start_tracing(self.options, self.run)
        if self._tracing is not None:
            patches.cleanup(self._tracing.close)

    def error_stack_for(self, exc: BaseException) -> list[ModuleCall]:
        """The modules that were executing when ``exc`` was raised (outermost first)."""
        return self.forwards.error_stack_for(exc)

    # -- what the hooks and wrappers report (see wrappers.RunObserver) -------------
    @property
    def inside_module(self) -> bool:
        """Whether a module's forward (or torchdoctor's own replay) is running now."""
        return self.forwards.inside_module

    def forward_before(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Global forward pre-hook."""
        if not self.forwards.inside_module:  # a top-level call: from model.forward(x)?
            direct = direct_forward_call(sys._getframe(1))
            if direct is not None and direct not in self.run.direct_forwards:
                self.run.direct_forwards.append(direct)
        self.gradless.forward(module)
        self.forwards.before(module, args)

    def unsafe_load(self, record: LoadRecord) -> None:
        """A ``torch.load`` that may unpickle arbitrary objects."""
        self.run.unsafe_loads.append(record)

    def checkpoint_call(self, kind: str, location: CodeLocation) -> None:
        """A ``torch.save``/``torch.load``/``load_state_dict`` call of the user's code."""
        self.run.checkpoints.append(CheckpointRecord(kind, location, len(self.run.forwards)))

    def forward_after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """Global forward hook."""
        self.forwards.after(module, args, output)
        index = self.forwards.model_index(module)
        if index is not None and not self.forwards.inside_module and sys.exc_info()[1] is None:
            self.setups.forward_done(index, output, torch.is_grad_enabled())

    def step_before(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Global optimizer step pre-hook."""
        self.setups.optimizer_seen(optimizer, applied=True)
        self.training.before_step(optimizer, args, kwargs)
        self.updates.before_step(optimizer)
        self.kept_graphs.in_step = True

    def step_after(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Global optimizer step post-hook."""
        self.updates.after_step(optimizer)  # first: the budget may end the run in the next
        self.gradless.after_step(optimizer)
        self.kept_graphs.in_step = False
        self.training.after_step(optimizer, args, kwargs)

    def functional_loss(self, name: str, args: tuple[Any, ...], output: Any,
                        options: dict[str, Any]) -> None:
        """A functional loss called outside any module."""
        self.losses.record(name, args, output, options)
        self.setups.loss(name, True, args, output, options)

    def _module_loss(self, name: str, args: tuple[Any, ...], output: Any,
                     options: dict[str, str], module: nn.Module) -> None:
        """A loss module called outside any model."""
        self.losses.record(name, args, output, options)
        self.setups.loss(name, False, args, output, options, module)

    def before_backward(self, tensor: torch.Tensor) -> None:
        """A ``backward()`` is about to run (hand-written updates are judged around it)."""
        self.manual.before_backward(tensor, user_callsite())
        if not self.progress.paused:  # not torchdoctor's own replay of a step
            self.setups.backward(tensor)
            self.kept_graphs.before_backward(tensor)

    def backward(self, value: float | None, started: float) -> None:
        """A finished ``backward()``."""
        self.timer.add("backward", started)
        self.manual.after_backward(self.training.has_optimizers)
        self.training.after_backward(value)

    def backward_succeeded(self) -> None:
        """A ``backward()`` returned: counted in its pass; the safety cap may end the run."""
        current = self.budget.current_pass
        if current is not None:
            self.run.passes[current.index].backwards += 1
        self.budget.after_backward()

    def internal_error(self, method: str, trace: str) -> None:
        """Our own recorder ``method`` failed (see wrappers.observe): kept once per
        method; the checks that read this run report ``crashed`` with it."""
        if not any(e.startswith(f"{method}: ") for e in self.run.internal_errors):
            self.run.internal_errors.append(f"{method}: {trace}")

    def zero_grad(self, owner: Any) -> None:
        """A ``zero_grad`` call of ``owner``."""
        if isinstance(owner, torch.optim.Optimizer):
            self.setups.optimizer_seen(owner)
        self.training.zero_grad(owner)

    def loader_pass(self, loader: DataLoader, batches: Iterator[Any]) -> Iterator[Any]:
        """A new DataLoader pass: counted, noted, and limited by the budget."""
        allowance = self.budget.start_pass(loader)
        self.run.loader_passes += 1
        self.run.passes.append(PassRecord(allowance.index, allowance.loader, allowance.number))
        self._note_synthetic(loader)
        # the iterator may outlive the run (a script can keep it): it reaches the run weakly
        link = self._link

        def ended(capped: bool) -> None:
            run = link.get()
            if run is not None:
                run.pass_ended(allowance, capped)

        return LimitedIterator(batches, allowance, routed("on_fetch", link), ended)

    def pass_ended(self, allowance: PassBudget, capped: bool) -> None:
        """A DataLoader pass stopped: exhausted, or capped by the budget."""
        self.budget.end_pass(allowance)
        record = self.run.passes[allowance.index]
        record.capped, record.extended, record.finished = capped, allowance.extended, True

    def _skipped_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.training.skipped_step(optimizer)

    def on_fetch(self, started: float) -> None:
        """A batch was fetched (its fetch started at ``started``)."""
        self.timer.add("data", started)
        self.run.batches += 1
        self.budget.fetched()
        current = self.budget.current_pass
        if current is not None:
            self.run.passes[current.index].batches += 1

    def _note_synthetic(self, loader: DataLoader) -> None:
        """Mark the report when the script trains on torchdoctor's synthetic stand-in."""
        data_module = sys.modules.get("torchdoctor.reference.data")
        if data_module is None:
            return
        try:
            kind = data_module.dataset_kind(loader.dataset)
        except TypeError:
            return
        if kind == "synthetic" and _SYNTHETIC_NOTE not in self.run.notes:
            self.run.notes.append(_SYNTHETIC_NOTE)
