"""The anatomy of a model that cannot learn, from one forward/backward pass on a copy.

Frozen parameters, parameters that get no gradient although their module runs (the
forward cuts the graph: the line that does it is searched in the forward's source),
parameters never used, parameters the optimizer does not hold, the learning rate, and a
final activation that keeps CrossEntropyLoss's logits non-negative. The overfit-one-batch
check reads it to say why a copy cannot fit one batch (:mod:`.overfit`), in the words of
:mod:`.parameters`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchdoctor.diagnoses import parameters

if TYPE_CHECKING:
    import torch
    from torch import nn

    from torchdoctor.diagnoses.final_layer import FinalActivation
    from torchdoctor.scriptrun.observations import ModuleInfo

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
    #: (weight_decay, lr) of the param group whose decay pulls hardest (lr x decay)
    decay: tuple[float, float] | None = None
    loss: str = ""
    classes: int | None = None
    final: FinalActivation | None = None


@dataclass
class Probe:
    """One forward/backward pass of the user's model and loss on a batch: the modules
    that ran, the output (detached) and the loss (backward already run if it could)."""

    ran: set[str]
    output: torch.Tensor
    loss: torch.Tensor


def probe(model: nn.Module, batch: tuple[Any, Any], loss_fn: Any) -> Probe:
    """Run the user's code once: forward noting which modules ran, the loss, backward.
    Whatever it raises is the user's (the batch does not fit the model, the loss does
    not take the output...): the caller decides; the analysis is :func:`anatomy_of`."""
    import torch

    from torchdoctor.reference.trainer import forward
    from torchdoctor.tensors import first_tensor

    ran: set[str] = set()
    handles = [m.register_forward_hook(lambda mod, a, o, n=name: ran.add(n))
               for name, m in model.named_modules()]
    try:
        output = forward(model, batch[0])
    finally:
        for handle in handles:
            handle.remove()
    tensor = first_tensor(output)
    if tensor is None:
        raise TypeError("the model returned no tensor")
    loss = loss_fn(output, batch[1])
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"the loss returned {type(loss).__name__}, not a tensor")
    if loss.requires_grad:
        loss.backward()
    return Probe(ran, tensor.detach(), loss)


def anatomy_of(model: nn.Module, seen: Probe, loss_fn: Any, optimizer: torch.optim.Optimizer,
               name: str, inputs: Any) -> Anatomy:
    """What stops ``model`` learning, from the gradients :func:`probe` left; they are
    cleared again (set to None) before returning."""
    from torchdoctor.validators import canonical_loss_name, loss_name_of

    found = Anatomy(optimizer=type(optimizer).__name__, lr=_lr(optimizer),
                    decay=_decay(optimizer),
                    loss=canonical_loss_name(loss_name_of(loss_fn)),
                    loss_has_grad=bool(seen.loss.requires_grad))
    _sort_parameters(model, seen.ran, optimizer, found)
    optimizer.zero_grad(set_to_none=True)
    output = seen.output
    if output.dim() >= 2 and found.loss in CLASS_LOSSES:
        found.classes = int(output.shape[1])
    if found.loss == "CrossEntropyLoss" and bool((output >= 0).all()):
        found.final = _non_negative_final(model, inputs, name)
    return found


def _sort_parameters(model: nn.Module, ran: set[str], optimizer: torch.optim.Optimizer,
                     anatomy: Anatomy) -> None:
    from torchdoctor.hooks import module_info

    anatomy.not_in_optimizer = parameters.not_in_optimizer(model.named_parameters(),
                                                           optimizer)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            anatomy.frozen.append(name)
            continue
        anatomy.trainable.append(name)
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


def _decay(optimizer: torch.optim.Optimizer) -> tuple[float, float] | None:
    pairs = [(float(g.get("weight_decay") or 0.0), float(g["lr"]))
             for g in optimizer.param_groups if "lr" in g]
    pairs = [p for p in pairs if p[0] > 0]
    return max(pairs, key=lambda p: p[0] * p[1]) if pairs else None


def _lr(optimizer: torch.optim.Optimizer) -> float | None:
    rates = [float(g["lr"]) for g in optimizer.param_groups if "lr" in g]
    return max(rates) if rates else None
