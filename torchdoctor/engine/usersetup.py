"""Model mode with the script's own training setup.

A script run captures, per root model, how the script trained it
(:class:`~torchdoctor.scriptrun.setupdata.CapturedSetup`). When that setup is a single
model trained by one ``torch.optim`` optimizer on a supervised loss of (output, target
from the batch), model-mode checks train copies with it: a fresh optimizer of the same
class with the same hyperparameters per param group (mapped by parameter name onto the
copy, at the initial learning rate: a scheduler's warmup or decay is not replayed), the
same loss, the same gradient clipping and the captured batch repeated. Otherwise
(GANs and other multi-optimizer programs, VAEs, policy gradients, contrastive losses,
hand-written updates) the reason is kept and the reference setup is used where the
model takes it. :func:`describe_setup` is how the report names the setup used.
"""

from __future__ import annotations

import copy
import functools
import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchdoctor.engine.context import SCRIPT_SOURCE, CheckOptions, ModelCandidate, TrainingSetup

if TYPE_CHECKING:
    import torch
    from torch import nn

    from torchdoctor.scriptrun.observations import ScriptRun
    from torchdoctor.scriptrun.setupdata import CapturedSetup, OptimizerSetup


#: one training step of a copy (forward and backward, measured) may take at most this
#: share of --timeout: model mode trains up to ~30 steps per check (nan-loss), and a
#: model the script could train is not always one model mode can afford
STEP_SHARE = 1 / 60


@dataclass
class ScriptSetup:
    """The script's setup for one model, or why it is not used (``reason``)."""

    setup: TrainingSetup | None
    reason: str = ""


def script_setup(run: ScriptRun, candidate: ModelCandidate,
                 options: CheckOptions) -> ScriptSetup:
    """The setup to train copies of ``candidate`` with, taken from the script run."""
    captured = next((s for s in run.setups if s.model == candidate.observed), None)
    if captured is None:
        return ScriptSetup(None)
    reason = _why_not(run, captured)
    if reason:
        return ScriptSetup(None, reason)
    setup = _training_setup(captured)
    slow = _too_slow(candidate, setup, options)
    return ScriptSetup(None, slow) if slow else ScriptSetup(setup)


def _why_not(run: ScriptRun, captured: CapturedSetup) -> str:
    """Why the captured setup cannot be replayed on a copy ("" when it can)."""
    if len(run.optimizers) > 1:
        return (f"the script uses {len(run.optimizers)} optimizers (adversarial or "
                "multi-part training), so one model's setup is not the whole story")
    if captured.problems:
        return captured.problems[0]
    if not captured.optimizers:
        return "no optimizer holds its parameters (updated by hand)"
    optimizer = captured.optimizers[0]
    if not optimizer.module.startswith("torch.optim"):
        return f"its optimizer {optimizer.type_name} is not one of torch.optim's"
    if optimizer.type_name == "LBFGS":
        return "LBFGS needs the script's closure to step"
    if not any(group.params for group in optimizer.groups):
        return "its optimizer holds none of its current parameters"
    if captured.loss is None or captured.inputs is None:
        return "no supervised batch was kept"
    if isinstance(captured.inputs, tuple) and not captured.inputs:
        return "the model is called with keyword arguments only"
    return ""


def _training_setup(captured: CapturedSetup) -> TrainingSetup:
    inputs, targets, loss = captured.inputs, captured.targets, captured.loss
    assert loss is not None
    optimizer = captured.optimizers[0]

    def make_batch() -> tuple[Any, Any]:
        return _clone(inputs), targets.clone()

    def make_loss() -> Any:
        if not loss.functional:
            made = copy.deepcopy(loss.module)
        else:
            from torch.nn import functional

            made = functools.partial(getattr(functional, loss.name), **loss.options)
        if loss.first_of_tuple or loss.reshape is not None:
            return _OutputAsScriptGaveIt(made, loss.first_of_tuple, loss.reshape)
        return made

    def make_for(model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(optimizer, model, captured.clipping)

    def make_optimizer(params: Any) -> torch.optim.Optimizer:
        # without the model (a plugin's check): one group with the first one's settings
        return _optimizer_class(optimizer)(list(params), **{
            **_accepted(optimizer, optimizer.defaults), **_accepted(
                optimizer, optimizer.groups[0].options)})

    data = f"a batch of {captured.batch_size} from the script" if captured.batch_size \
        else "a batch from the script"
    return TrainingSetup(make_batch=make_batch, make_loss=make_loss,
                         make_optimizer=make_optimizer, data=data,
                         source=dict.fromkeys(("batch", "loss", "optimizer"), SCRIPT_SOURCE),
                         make_optimizer_for=make_for,
                         description=f"your setup: {captured.describe()}",
                         summary=captured.describe_training(),
                         origin=optimizer.location or (loss.location if loss else ""))


def build_optimizer(spec: OptimizerSetup, model: nn.Module,
                    clipping: list[tuple[str, float]] | None = None) -> torch.optim.Optimizer:
    """A fresh optimizer like ``spec`` over ``model``'s parameters, group by group by
    parameter name (a parameter the script's optimizer did not hold stays out), with
    the script's gradient clipping applied before each step."""
    import torch

    named = dict(model.named_parameters())
    # a DataParallel-wrapped model's names start with "module."; model mode trains the
    # wrapped module itself (engine.target.unwrapped)
    named.update({f"module.{n}": p for n, p in list(named.items())})
    groups = [{**group.options, "params": [named[n] for n in group.params if n in named]}
              for group in spec.groups]
    optimizer = _optimizer_class(spec)([g for g in groups if g["params"]],
                                       **_accepted(spec, spec.defaults))
    if clipping:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        kind, limit = clipping[0]
        clip = torch.nn.utils.clip_grad_norm_ if kind == "norm" else \
            torch.nn.utils.clip_grad_value_
        def clip_first(*_: Any) -> None:
            clip(params, limit)

        # a hook on this copy's optimizer only: it goes with the optimizer
        optimizer.register_step_pre_hook(clip_first)
    return optimizer


def _optimizer_class(spec: OptimizerSetup) -> type[torch.optim.Optimizer]:
    import torch

    cls: type[torch.optim.Optimizer] = getattr(torch.optim, spec.type_name)
    return cls


def _accepted(spec: OptimizerSetup, options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` the optimizer's constructor takes as keywords."""
    accepted = inspect.signature(_optimizer_class(spec).__init__).parameters
    return {k: v for k, v in options.items() if k in accepted and k != "params"}


def _too_slow(candidate: ModelCandidate, setup: TrainingSetup, options: CheckOptions) -> str:
    """Why copies of the model cannot be trained within the time budget, or ""."""

    from torchdoctor.synth.resolve import MAX_CPU_PARAMETERS, ON_META, on_meta
    from torchdoctor.tensors import one_cpu_thread

    model = candidate.build()
    if on_meta(model):
        return ON_META
    model = model.to(options.device)
    count = sum(p.numel() for p in model.parameters())
    if options.device.startswith("cpu") and count > MAX_CPU_PARAMETERS:
        return f"too large to train copies on the CPU ({count / 1e6:.0f}M parameters)"
    inputs, targets = setup.batch(options.device)
    loss_fn = setup.make_loss()
    seconds = float("inf")
    with one_cpu_thread(options.device):
        for _ in range(2):  # the first step pays one-off set-up costs
            started = time.perf_counter()
            try:
                _forward_backward(model, inputs, targets, loss_fn)
            except Exception as exc:  # the user's model on its batch, replayed: say why
                return (f"its batch from the script does not run through a copy "
                        f"({type(exc).__name__}: {str(exc)[:120]})")
            seconds = min(seconds, time.perf_counter() - started)
    if seconds > options.timeout * STEP_SHARE:
        return (f"a training step on the script's batch takes ~{seconds:.1f} s on "
                f"{options.device}, over model mode's budget (--timeout/"
                f"{round(1 / STEP_SHARE)}): raise --timeout or use --device cuda")
    return ""


def _forward_backward(model: nn.Module, inputs: Any, targets: Any, loss_fn: Any) -> None:
    from torchdoctor.tensors import forward

    loss_fn(forward(model, inputs), targets).backward()


def describe_setup(setup: TrainingSetup, note: str = "") -> str:
    """How model mode trained a model: ``your setup: SGD(lr=0.01), CrossEntropyLoss, a
    batch of 64 from the script`` or ``reference setup: ...`` (with why the script's
    own setup was not used)."""
    if setup.description:
        return setup.description
    parts = {"optimizer": "Adam(lr=0.001)", "loss": "CrossEntropyLoss", "batch": setup.data}
    for what in parts:
        given = setup.source.get(what, "reference")
        if given not in ("reference", "synthetic"):
            parts[what] = given
    if setup.source.get("batch") == "synthetic":
        text = f"synthetic task: {parts['optimizer']}, {setup.data}"
    else:
        text = f"reference setup: {parts['optimizer']}, {parts['loss']}, {parts['batch']}"
    return f"{text} (your setup not used: {note})" if note else text


class _OutputAsScriptGaveIt:
    """The script's loss, given the output as the script gave it: the first element of
    a tuple output (``output, hidden``), reshaped as it was (``output.view(-1, C)``)."""

    def __init__(self, loss: Any, first: bool, shape: tuple[int, ...] | None) -> None:
        self.loss = loss
        #: what the loss really is, for ``loss_name_of`` (as ``functools.partial`` has)
        self.func = getattr(loss, "func", loss)
        self.first = first
        self.shape = shape

    def __call__(self, output: Any, targets: Any) -> Any:
        prediction = output[0] if self.first else output
        if self.shape is not None:
            prediction = prediction.reshape(self.shape)
        return self.loss(prediction, targets)


def _clone(inputs: Any) -> Any:
    if isinstance(inputs, tuple):
        return tuple(_clone(t) for t in inputs)
    return inputs.clone() if hasattr(inputs, "clone") else inputs
