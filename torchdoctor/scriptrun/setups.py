"""The training-setup recorder of a script run: per root model the script trains, its
optimizer(s), loss, LR schedulers, GradScaler, gradient clipping and the first batch of
a supervised step, kept in :class:`~torchdoctor.scriptrun.setupdata.CapturedSetup` so that
model mode can train copies the way the script does.

A step is *supervised* when the model ran once with autograd on, one loss call took its
output and a target that needs no gradient, and ``backward()`` ran on that loss (or on
it scaled by a constant: a GradScaler, gradient accumulation). Anything else (two
losses summed as in a VAE, a loss built by hand as in policy gradients, a model run
several times per step as in siamese nets or RNN loops) is noted as the reason the
setup cannot be replayed. Only weak references to the user's objects are held during
the run; the batch is cloned (detached, on the CPU) once.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchdoctor.scriptrun.callsite import user_callsite
from torchdoctor.scriptrun.setupdata import (
    CapturedSetup,
    LossSetup,
    OptimizerSetup,
    ParamGroupSetup,
)
from torchdoctor.tensors import iter_tensors

#: a batch bigger than this is not kept (model mode would not train on it anyway)
MAX_BATCH_BYTES = 64 * 2**20
#: at most this many samples of the batch are kept (the reference batch's size), when
#: every input and the target share their first dimension (so it is the batch's)
MAX_SAMPLES = 64
#: hyperparameter values kept from a param group (numbers, flags, tuples of numbers)
_PLAIN = (int, float, bool, str, tuple, type(None))
#: ``backward()`` on the loss scaled by a constant is still that loss
_SCALING = ("MulBackward0", "DivBackward0")
#: a loss may take the output reshaped (``output.view(-1, vocab)``, ``.squeeze()``)
_VIEWS = ("ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward", "SqueezeBackward",
          "UnsqueezeBackward")


@dataclass
class _Pending:
    """A loss computed on a model's output, waiting for its ``backward()``."""

    loss: LossSetup
    #: the loss's autograd node (alive until the backward pass anyway)
    node: Any
    target: torch.Tensor


@dataclass
class _ModelState:
    """What is known of one root model's training so far."""

    output: weakref.ref[torch.Tensor] | None = None
    tuple_output: bool = False
    forwards: int = 0  #: forwards with autograd on since the last backward
    pending: list[_Pending] = field(default_factory=list)
    captured: CapturedSetup | None = None
    problem: str = ""


class SetupRecorder:
    """Fed by the instrumentation (forwards, losses, backward, optimizers) and by the
    patches :mod:`~torchdoctor.scriptrun.setuppatches` puts on optimizer/scheduler
    construction, GradScaler and gradient clipping."""

    def __init__(self, inputs_of: Callable[[int], tuple[Any, ...] | None]) -> None:
        self._inputs_of = inputs_of
        self._models: dict[int, _ModelState] = {}
        # optimizers are numbered weakly (the script's function that built one may have
        # returned before the run ends); what is known of each outlives it, by number
        self._keys: weakref.WeakKeyDictionary[torch.optim.Optimizer, int] = \
            weakref.WeakKeyDictionary()
        self._optimizers: dict[int, OptimizerSetup] = {}
        self._count = 0
        self._param_ids: dict[int, list[list[int]]] = {}  # number -> group param ids
        self._built_at: dict[int, str] = {}
        self._schedulers: list[tuple[str, int]] = []  # (class name, optimizer number)
        self._scaler = False
        self._clipping: list[tuple[str, float]] = []

    # -- construction of optimizers and schedulers, GradScaler, clipping ------------
    def built(self, optimizer: torch.optim.Optimizer) -> None:
        """An optimizer was constructed (where: the user's line)."""
        where = user_callsite()
        if where is not None:
            self._built_at.setdefault(self._key(optimizer), str(where))

    def scheduler(self, scheduler: Any) -> None:
        """An LR scheduler was constructed."""
        optimizer = getattr(scheduler, "optimizer", None)
        if isinstance(optimizer, torch.optim.Optimizer):
            self._schedulers.append((type(scheduler).__name__, self._key(optimizer)))

    def _key(self, optimizer: torch.optim.Optimizer) -> int:
        if optimizer not in self._keys:
            self._count += 1
            self._keys[optimizer] = self._count
        return self._keys[optimizer]

    def scaled(self) -> None:
        """``GradScaler.scale`` was called (mixed precision)."""
        self._scaler = True

    def clipped(self, kind: str, limit: float) -> None:
        """``clip_grad_norm_``/``clip_grad_value_`` was called with ``limit``."""
        if len(self._clipping) < 4 and (kind, limit) not in self._clipping:
            self._clipping.append((kind, limit))

    # -- the training loop -----------------------------------------------------------
    def optimizer_seen(self, optimizer: torch.optim.Optimizer, applied: bool = False) -> None:
        """An optimizer's ``zero_grad()`` or ``step()``: its groups as first seen."""
        key = self._key(optimizer)
        found = self._optimizers.get(key)
        if found is None:
            found = self._optimizers[key] = _describe_optimizer(
                optimizer, self._built_at.get(key, ""))
            self._param_ids[key] = [[id(p) for p in g["params"]]
                                    for g in optimizer.param_groups]
        if applied:
            found.applied_steps += 1

    def forward_done(self, index: int, output: Any, grad_enabled: bool) -> None:
        """Root model ``index`` returned ``output``."""
        state = self._models.setdefault(index, _ModelState())
        tensor = _main_tensor(output)
        state.output = weakref.ref(tensor) if tensor is not None else None
        state.tuple_output = not isinstance(output, torch.Tensor)
        if grad_enabled and tensor is not None and tensor.requires_grad:
            state.forwards += 1
            state.pending.clear()  # only the losses of the latest forward count

    def loss(self, name: str, functional: bool, args: tuple[Any, ...], output: Any,
             options: dict[str, Any], module: nn.Module | None = None) -> None:
        """A loss call outside any model: pending when it takes a model's output."""
        prediction = args[0] if args else None
        target = args[1] if len(args) > 1 else None
        if not isinstance(output, torch.Tensor) or not isinstance(prediction, torch.Tensor) \
                or output.grad_fn is None:
            return  # not a training loss (evaluation, no_grad)
        for state in self._models.values():
            model_output = state.output() if state.output is not None else None
            reshaped = _reshaped(prediction, model_output)
            if model_output is not None and (prediction is model_output or reshaped):
                if not isinstance(target, torch.Tensor) or target.requires_grad:
                    state.problem = state.problem or (
                        f"its loss {name} compares the output with another output, not "
                        "with targets from the data (contrastive, adversarial or "
                        "distillation training)")
                    return
                spec = LossSetup(name, functional, dict(options), location=str(
                    user_callsite() or ""), first_of_tuple=state.tuple_output,
                    reshape=tuple(prediction.shape) if reshaped else None)
                if module is not None and not state.pending and state.captured is None:
                    spec.module = _copy_loss(module)
                    if spec.module is None:
                        state.problem = (f"its loss module {name} holds a model or objects "
                                         "that cannot be copied")
                        return
                state.pending.append(_Pending(spec, output.grad_fn, target))
                return

    def backward(self, tensor: torch.Tensor) -> None:
        """``backward()`` of ``tensor``: a supervised step of each model that ran?"""
        for index, state in self._models.items():
            if state.forwards:
                self._judge_step(index, state, tensor)
            state.forwards = 0
            state.pending.clear()

    def _judge_step(self, index: int, state: _ModelState, tensor: torch.Tensor) -> None:
        if state.problem:
            return
        losses = [p for p in state.pending if _derives_from(tensor, p.node)]
        if not state.pending:
            state.problem = ("no torch.nn loss takes its output as it is (the loss is "
                             "computed inside the model, on a processed output, or by hand "
                             "as in policy gradients)")
        elif not losses:
            state.problem = ("backward() runs on more than its loss (a VAE's "
                             "reconstruction + KL, several losses summed)")
        elif len(state.pending) > 1:
            state.problem = f"{len(state.pending)} losses per backward pass"
        elif state.captured is None:
            state.captured = self._capture(index, losses[0])

    def _capture(self, index: int, pending: _Pending) -> CapturedSetup | None:
        inputs = self._inputs_of(index)
        if inputs is None:
            return None
        given = inputs[0] if len(inputs) == 1 else tuple(inputs)
        setup = CapturedSetup(model=index, model_type="", loss=pending.loss)
        if not _plain(given):
            # a dict or an object: nothing of it is kept (it may hold anything of the user's)
            setup.problems.append("it takes inputs other than tensors (a dict, an object)")
            return setup
        rows = _samples(given, pending.target)
        size = sum((t.numel() if rows is None else t[:rows].numel()) * t.element_size()
                   for t in (*iter_tensors(given), pending.target))
        if size > MAX_BATCH_BYTES:
            setup.problems.append(f"its batch is too large to keep ({size / 2**20:.0f} MiB)")
            return setup
        kept_inputs = _cpu_clone(given, rows)
        kept_target = _cpu_clone(pending.target, rows)
        setup.inputs, setup.targets = kept_inputs, kept_target
        first = next(iter_tensors(kept_inputs), None)
        setup.batch_size = int(first.shape[0]) if first is not None and first.dim() else None
        return setup

    # -- the end of the run ----------------------------------------------------------
    def finish(self, models: list[nn.Module]) -> list[CapturedSetup]:
        """One CapturedSetup per root model that trained (ran forward with autograd and
        has an optimizer or a loss), in model order."""
        setups = []
        for index, model in enumerate(models):
            state = self._models.get(index, _ModelState())
            names = {id(p): name for name, p in model.named_parameters()}
            held = self._optimizers_of(names)
            optimizers = [setup for _, setup in held]
            if not optimizers and state.captured is None and not state.problem:
                continue
            setup = state.captured or CapturedSetup(model=index, model_type="")
            setup.model_type = type(model).__name__
            setup.optimizers = optimizers
            if state.problem:
                setup.problems.insert(0, state.problem)
            elif state.captured is None:
                setup.problems.append("no supervised training step was seen (a loss of the "
                                      "model's output and targets, then backward())")
            ids = {owner for owner, _ in held}
            setup.schedulers = [name for name, owner in self._schedulers if owner in ids]
            setup.grad_scaler = self._scaler
            setup.clipping = list(self._clipping)
            setups.append(setup)
        self._models.clear()
        return setups

    def _optimizers_of(self, names: dict[int, str]) -> list[tuple[int, OptimizerSetup]]:
        """The optimizers holding some of these parameters (by id), their groups named."""
        found = []
        for key, setup in self._optimizers.items():
            groups = self._param_ids.get(key, [])
            if not any(i in names for group in groups for i in group):
                continue
            named = copy.copy(setup)
            named.groups = [ParamGroupSetup(g.options, [names[i] for i in ids if i in names],
                                            sum(1 for i in ids if i not in names))
                            for g, ids in zip(setup.groups, groups)]
            found.append((key, named))
        return found


def _describe_optimizer(optimizer: torch.optim.Optimizer, location: str) -> OptimizerSetup:
    groups, scheduled = [], False
    for group in optimizer.param_groups:
        options = {k: _scalar(v) for k, v in group.items()
                   if k not in ("params", "initial_lr") and isinstance(_scalar(v), _PLAIN)}
        if "initial_lr" in group:
            scheduled = scheduled or _scalar(group["initial_lr"]) != options.get("lr")
            options["lr"] = _scalar(group["initial_lr"])
        groups.append(ParamGroupSetup(options, []))
    defaults = {k: _scalar(v) for k, v in optimizer.defaults.items()
                if isinstance(_scalar(v), _PLAIN)}
    return OptimizerSetup(type(optimizer).__name__, type(optimizer).__module__, defaults,
                          groups, location, scheduled)


def _scalar(value: Any) -> Any:
    """A tensor hyperparameter (``lr`` of a capturable optimizer) as a float."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return value


def _plain(value: Any) -> bool:
    """Whether ``value`` is tensors, numbers and tuples of them (what a batch copy may
    hold: nothing that could reference the user's other objects)."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (int, float, bool, str))


def _copy_loss(module: nn.Module) -> nn.Module | None:
    """A CPU copy of a loss module, or None when it holds a model (over a million
    numbers in parameters and buffers) or cannot be copied."""
    if sum(t.numel() for t in (*module.parameters(), *module.buffers())) > 1_000_000:
        return None
    try:
        return copy.deepcopy(module).cpu()
    except Exception:  # the user's loss class may hold anything (a lock, a file): no copy
        return None


def _main_tensor(output: Any) -> torch.Tensor | None:
    """The prediction of a model output: the tensor, or the first of a tuple/list."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _reshaped(prediction: torch.Tensor, output: torch.Tensor | None) -> bool:
    """Whether ``prediction`` is ``output`` reshaped (a view of all of it)."""
    node = prediction.grad_fn
    if output is None or node is None or not type(node).__name__.startswith(_VIEWS):
        return False
    inputs = [n for n, _ in node.next_functions if n is not None]
    return len(inputs) == 1 and inputs[0] is output.grad_fn and \
        prediction.numel() == output.numel()


def _derives_from(tensor: torch.Tensor, loss: Any) -> bool:
    """Whether ``tensor`` is the loss whose autograd node is ``loss``, or that loss
    times or over a constant."""
    node = tensor.grad_fn
    if node is None:
        return False
    if node is loss:
        return True
    if type(node).__name__ not in _SCALING:
        return False
    inputs = [n for n, _ in node.next_functions if n is not None]
    return len(inputs) == 1 and inputs[0] is loss


def _samples(inputs: Any, target: torch.Tensor) -> int | None:
    """How many rows to keep: :data:`MAX_SAMPLES` when every tensor of the batch has
    more along a shared first dimension, else None (all of it)."""
    tensors = [*iter_tensors(inputs), target]
    sizes = {t.shape[0] if t.dim() else 0 for t in tensors}
    size = next(iter(sizes))
    return MAX_SAMPLES if len(sizes) == 1 and size > MAX_SAMPLES else None


def _cpu_clone(value: Any, rows: int | None = None) -> Any:
    """A detached CPU copy (its first ``rows`` rows, when given)."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return (value if rows is None else value[:rows]).to("cpu", copy=True)
    if isinstance(value, tuple):
        return tuple(_cpu_clone(v, rows) for v in value)
    return value
