"""The work of the overfit-one-batch check, on a copy of the model.

:func:`examine` looks at the copy's anatomy with one forward/backward pass (frozen
parameters, parameters that get no gradient although their module runs, parameters
the optimizer does not hold, the learning rate, a final activation that keeps the
logits non-negative), then trains it on one fixed batch with the setup's loss and
optimizer: up to :data:`MAX_STEPS` steps, stopping once the loss is under 5 % of the
first one (or under 0.05), within a time budget.

Dropout makes the training loss of one batch noisy, so the copy trains in train() as
a user's loop does but is judged by the better of its lowest training loss and its
loss in eval() at the end, against a tolerance of twice the stopping threshold.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchdoctor.errors import UserCodeError, user_code

if TYPE_CHECKING:
    import torch
    from torch import nn

    from torchdoctor.diagnoses.final_layer import FinalActivation
    from torchdoctor.engine.context import CheckContext, ModelCandidate
    from torchdoctor.scriptrun.observations import ModuleInfo

MAX_STEPS = 200
CHUNK = 10  #: at most this many steps between two looks at the clock
RELATIVE_TARGET = 0.05  #: stop when the loss is below this fraction of the first loss
ABSOLUTE_TARGET = 0.05  #: ... or below this value
TOLERANCE = 2.0  #: converged when the judged loss is within this factor of the target
#: code that cuts the autograd graph inside a forward
_CUTS_GRAPH = re.compile(r"\.detach\(|no_grad|inference_mode|\.item\(|\.numpy\(|\.tolist\(|"
                         r"\.data\b")
#: losses whose first value can be compared with ln(classes)
CLASS_LOSSES = ("CrossEntropyLoss", "NLLLoss")


@dataclass
class Anatomy:
    """What one forward/backward pass on the copy shows."""

    trainable: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    #: trainable, their module ran, yet no gradient: the forward cut the graph
    cut: list[str] = field(default_factory=list)
    cut_module: ModuleInfo | None = None
    #: the line in forward that cuts the graph (``.detach()``, ``no_grad``...), if found
    cut_line: str = ""
    #: trainable but their module never ran
    unused: list[str] = field(default_factory=list)
    not_in_optimizer: list[str] = field(default_factory=list)
    loss_has_grad: bool = True
    optimizer: str = ""
    lr: float | None = None
    loss: str = ""
    classes: int | None = None
    final: FinalActivation | None = None


@dataclass
class Fit:
    """How training the copy on one batch went."""

    losses: list[float]
    eval_loss: float
    seconds: float
    out_of_time: bool

    @property
    def initial(self) -> float:
        """The loss before the first update."""
        return self.losses[0]

    @property
    def best(self) -> float:
        """The lowest loss seen: in training, or in eval() at the end."""
        return min([*self.losses, self.eval_loss])

    @property
    def target(self) -> float:
        """The loss to reach: 5 % of the first one, or 0.05."""
        return max(ABSOLUTE_TARGET, RELATIVE_TARGET * self.initial)

    @property
    def finite(self) -> bool:
        """Whether every loss stayed finite."""
        return all(math.isfinite(v) for v in [*self.losses, self.eval_loss])

    @property
    def converged(self) -> bool:
        """Whether the copy fitted the batch (within the tolerance)."""
        return self.finite and self.best <= TOLERANCE * self.target

    @property
    def still_falling(self) -> bool:
        """Whether the loss kept going down steadily (slow, not stuck): the last tenth
        of the run is clearly below the middle of it."""
        half = self.losses[len(self.losses) // 2:]
        tail = half[-max(1, len(self.losses) // 10):]
        return len(self.losses) >= 20 and sum(tail) / len(tail) < 0.9 * half[0]

    def describe(self, batch_size: int | None) -> str:
        """``loss 2.31 -> 1.42 in 200 steps on one batch of 64``."""
        batch = f" of {batch_size}" if batch_size else ""
        steps = f"{len(self.losses)} step" + ("s" if len(self.losses) != 1 else "")
        return f"loss {self.initial:.3g} -> {self.best:.3g} in {steps} on one batch{batch}"


@dataclass
class Examination:
    """Anatomy and fit of one candidate."""

    anatomy: Anatomy
    fit: Fit | None
    batch_size: int | None
    #: the exception training the copy raised (the user's optimizer hook...), if any
    error: str = ""


def examine(ctx: CheckContext, candidate: ModelCandidate, budget: float) -> Examination | None:
    """Examine and train a copy of ``candidate``; None when the setup's batch does not
    run through it (shape-mismatch and device-mismatch say why)."""
    from torchdoctor.tensors import first_tensor

    setup = ctx.training_setup(candidate)
    model = ctx.fresh_model(candidate)
    batch = setup.batch(ctx.options.device)
    loss_fn = setup.make_loss()
    optimizer = setup.make_optimizer(model.parameters())
    try:
        anatomy = _anatomy(model, batch, loss_fn, optimizer, candidate.name)
    except UserCodeError:  # the user's model or loss does not take the batch
        return None
    first = first_tensor(batch[0])
    size = int(first.shape[0]) if first is not None and first.dim() else None
    if not (anatomy.trainable and anatomy.loss_has_grad):
        return Examination(anatomy, None, size)
    try:
        with _one_cpu_thread(ctx.options.device):
            return Examination(anatomy, _fit(model, batch, loss_fn, optimizer, budget), size)
    except Exception as exc:  # the user's code raised: report it, do not crash the check
        return Examination(anatomy, None, size, f"{type(exc).__name__}: {exc}")


@contextmanager
def _one_cpu_thread(device: str) -> Iterator[None]:
    """Train on one CPU thread, restoring the caller's setting after. A one-batch fit
    of a small model gains nothing from more, and on a machine whose cores are busy
    (a CI runner, a laptop running tests) OpenMP's waiting threads make it 10x slower."""
    import torch

    if not device.startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _anatomy(model: nn.Module, batch: tuple[Any, Any], loss_fn: Any,
             optimizer: torch.optim.Optimizer, name: str) -> Anatomy:
    from torchdoctor.validators import canonical_loss_name, loss_name_of

    ran, output, loss = _probe(model, batch, loss_fn)
    anatomy = Anatomy(optimizer=type(optimizer).__name__, lr=_lr(optimizer),
                      loss=canonical_loss_name(loss_name_of(loss_fn)),
                      loss_has_grad=bool(loss.requires_grad))
    if loss.requires_grad:
        with user_code():
            loss.backward()
    _sort_parameters(model, ran, optimizer, anatomy)
    optimizer.zero_grad(set_to_none=True)
    if output.dim() >= 2 and anatomy.loss in CLASS_LOSSES:
        anatomy.classes = int(output.shape[1])
    if anatomy.loss == "CrossEntropyLoss" and bool((output >= 0).all()):
        anatomy.final = _non_negative_final(model, batch[0], name)
    return anatomy


def _probe(model: nn.Module, batch: tuple[Any, Any],
           loss_fn: Any) -> tuple[set[str], torch.Tensor, torch.Tensor]:
    """One forward pass noting which modules ran; the output and the loss."""
    import torch

    from torchdoctor.reference.trainer import forward
    from torchdoctor.tensors import first_tensor

    ran: set[str] = set()
    handles = [m.register_forward_hook(lambda mod, a, o, n=name: ran.add(n))
               for name, m in model.named_modules()]
    try:
        with user_code():
            output = forward(model, batch[0])
    finally:
        for handle in handles:
            handle.remove()
    tensor = first_tensor(output)
    if tensor is None:
        raise UserCodeError(TypeError("the model returned no tensor"))
    with user_code():
        loss = loss_fn(output, batch[1])
    if not isinstance(loss, torch.Tensor):
        raise UserCodeError(TypeError(f"the loss returned {type(loss).__name__}, not a tensor"))
    return ran, tensor.detach(), loss


def _sort_parameters(model: nn.Module, ran: set[str], optimizer: torch.optim.Optimizer,
                     anatomy: Anatomy) -> None:
    from torchdoctor.hooks import module_info

    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            anatomy.frozen.append(name)
            continue
        anatomy.trainable.append(name)
        if id(param) not in held:
            anatomy.not_in_optimizer.append(name)
        owner = name.rpartition(".")[0]
        if param.grad is None and anatomy.loss_has_grad:
            (anatomy.cut if owner in ran else anatomy.unused).append(name)
            if owner in ran and anatomy.cut_module is None:
                anatomy.cut_module = module_info(owner, model.get_submodule(owner))
                anatomy.cut_line = _cut_line(model, owner)


def _cut_line(model: nn.Module, owner: str) -> str:
    """The line that cuts the graph, searched in the forward of ``owner`` and then of
    each module that contains it (user classes only), nearest first."""
    from torchdoctor.diagnoses.source import forward_source_line

    parts = owner.split(".") if owner else []
    for depth in range(len(parts), -1, -1):
        module = model.get_submodule(".".join(parts[:depth]))
        if type(module).__module__.startswith("torch."):
            continue
        found = forward_source_line(module, lambda code: bool(_CUTS_GRAPH.search(code)))
        if found is not None:
            return str(found[0])
    return ""


def _non_negative_final(model: nn.Module, inputs: Any, name: str) -> FinalActivation | None:
    from torchdoctor.diagnoses.final_layer import NON_NEGATIVE, final_activation

    final = final_activation(model, inputs, name)
    if final is None or final.name.lower() not in {n.lower() for n in NON_NEGATIVE}:
        return None
    return final


def _lr(optimizer: torch.optim.Optimizer) -> float | None:
    rates = [float(g["lr"]) for g in optimizer.param_groups if "lr" in g]
    return max(rates) if rates else None


def _fit(model: nn.Module, batch: tuple[Any, Any], loss_fn: Any,
         optimizer: torch.optim.Optimizer, budget: float) -> Fit:
    from torchdoctor.reference.trainer import train_steps

    started = time.perf_counter()
    losses = train_steps(model, batch, loss_fn, optimizer, 1)
    stop = max(ABSOLUTE_TARGET, RELATIVE_TARGET * losses[0])
    out_of_time = False
    while len(losses) < MAX_STEPS and _going(losses, stop):
        spent = time.perf_counter() - started
        # chunks sized so that a slow model cannot overrun the budget by much
        steps = min(CHUNK, MAX_STEPS - len(losses),
                    int((budget - spent) / (spent / len(losses))))
        if steps < 1:
            out_of_time = True
            break
        losses += train_steps(model, batch, loss_fn, optimizer, steps, stop_below=stop)
    return Fit(losses, _eval_loss(model, batch, loss_fn), time.perf_counter() - started,
               out_of_time)


def _going(losses: list[float], stop: float) -> bool:
    return math.isfinite(losses[-1]) and losses[-1] >= stop


def _eval_loss(model: nn.Module, batch: tuple[Any, Any], loss_fn: Any) -> float:
    import torch

    from torchdoctor.reference.trainer import forward
    from torchdoctor.tensors import set_training

    set_training(model, False)
    try:
        with torch.no_grad():
            return float(loss_fn(forward(model, batch[0]), batch[1]))
    finally:
        set_training(model)
