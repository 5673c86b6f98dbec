"""Parameters that cannot learn: missing from the optimizer, without a gradient, frozen,
or never updated because no optimizer step runs.

One home for their ids, words and fixes. ``watch()`` reports them under their own ids
(``not-in-optimizer``, ``no-gradient``), the assertion helpers' findings carry the same
ids, and the overfit-one-batch check quotes the same words as reasons why a copy cannot
fit a batch. No torch at module level: checks import this while listing checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from torchdoctor.diagnoses.wording import name_list
from torchdoctor.findings import Finding, Severity

if TYPE_CHECKING:
    import torch

    from torchdoctor.scriptrun.observations import GradlessRecord, ScriptRun

#: trainable parameters that no param_group of the optimizer holds
NOT_IN_OPTIMIZER_ID = "not-in-optimizer"
#: parameters whose gradient stays missing or zero
NO_GRADIENT_ID = "no-gradient"
#: names quoted in these messages before "and N more"
SHOWN = 6

NOT_IN_OPTIMIZER_HINT = (
    "build the optimizer over all of them (`torch.optim.Adam(model.parameters())`, after "
    "the model is complete: layers added or replaced later are not in it), or freeze the "
    "ones meant to stay fixed with `requires_grad_(False)`")
NONE_IN_OPTIMIZER_HINT = ("build the optimizer on this model: "
                          "`torch.optim.Adam(model.parameters(), ...)`")
NO_GRADIENT_HINT = (
    "use them in forward and do not cut the graph to them (`.detach()`, `.item()`, "
    "`.data`, `torch.no_grad()` in forward); to keep them fixed on purpose, freeze them "
    "with `requires_grad_(False)` and leave them out of the optimizer")
NO_BACKWARD_HINT = "call `loss.backward()` before `optimizer.step()`"
#: the loss itself is not connected to any trainable parameter
NO_GRAPH_HINT = (
    "do not compute the loss (or the model output) under `torch.no_grad()`, from "
    "`.detach()`/`.item()`/`.numpy()` values, or from tensors rebuilt with "
    "`torch.tensor(...)`; to freeze layers on purpose use `layer.requires_grad_(False)`")
FROZEN_HINT = ("unfreeze them (`requires_grad_(True)`), or train longer if the frozen part "
               "is a pretrained backbone")


def not_in_optimizer(named: Iterable[tuple[str, torch.Tensor]],
                     optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the trainable parameters in ``named`` that no param_group holds."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [name for name, p in named if p.requires_grad and id(p) not in held]


#: the loss is connected to no trainable parameter at all
NO_GRAPH_PHRASE = "the loss does not depend on any trainable parameter"


def frozen_phrase(names: list[str]) -> str:
    """``fc1.weight, fc1.bias are frozen (requires_grad=False)``."""
    return f"{name_list(names, SHOWN)} {'is' if len(names) == 1 else 'are'} frozen " \
        "(requires_grad=False)"


def cut_phrase(names: list[str], module: str) -> str:
    """Parameters whose module ran but which got no gradient: the graph is cut."""
    return (f"{name_list(names, SHOWN)} get no gradient although they require one and "
            f"{module} runs: the forward cuts the graph after it (or its output never "
            "reaches the loss)")


def not_held_phrase(names: list[str]) -> str:
    """``the optimizer does not hold fc1.weight, fc1.bias, so they never change``."""
    return (f"the optimizer does not hold {name_list(names, SHOWN)}, so "
            f"{'it never changes' if len(names) == 1 else 'they never change'}")


def not_in_optimizer_finding(names: list[str], trainable: int, model: str) -> Finding | None:
    """The finding for trainable parameters missing from the optimizer (an error when
    it holds none of the ``trainable`` ones: it was built on another model)."""
    if not names:
        return None
    if len(names) == trainable:
        return Finding(NOT_IN_OPTIMIZER_ID, Severity.ERROR,
                       "the optimizer holds none of the model's parameters (was it built on "
                       "another model, or on a copy?)", model, NONE_IN_OPTIMIZER_HINT)
    return Finding(NOT_IN_OPTIMIZER_ID, Severity.WARNING,
                   f"{len(names)} trainable parameter(s) are in no param_group: "
                   f"{not_held_phrase(names)}", names[0], NOT_IN_OPTIMIZER_HINT)


def no_gradient_finding(names: list[str], everything: bool, steps: int) -> Finding | None:
    """Parameters whose gradient was missing or zero at every one of ``steps`` steps
    (an error when that is all of them: no backward pass at all)."""
    if not names or steps == 0:
        return None
    if everything:
        return Finding(NO_GRADIENT_ID, Severity.ERROR,
                       f"no parameter received a gradient in {steps} step(s)", names[0],
                       NO_BACKWARD_HINT)
    return Finding(NO_GRADIENT_ID, Severity.WARNING,
                   f"{len(names)} parameter(s) never received a gradient in {steps} "
                   f"step(s): {name_list(names, SHOWN)}", names[0], NO_GRADIENT_HINT)



#: script mode: the script's own optimizer leaves parameters unchanged
PARAMS_NOT_UPDATING_ID = "params-not-updating"
PARAMS_NOT_UPDATING_SUMMARY = ("parameters that never change: backward passes but no "
                               "optimizer step, gradients on parameters in no optimizer, "
                               "or optimizer parameters that never get a gradient")
NO_STEP_HINT = ("call the step: `optimizer.step()` after `loss.backward()` (written without "
                "parentheses, `optimizer.step` does nothing)")


def no_step_finding(run: ScriptRun) -> Finding | None:
    """The error for a script whose backward passes are never followed by an optimizer
    step, although it uses an optimizer (a loop without one updates by hand: quiet)."""
    if not run.backwards or not run.optimizers or run.steps:
        return None
    optimizer = run.optimizers[0]
    seen = f" (seen at {optimizer.location})" if optimizer.location else ""
    first = run.backwards[0]
    where = first.location or optimizer.location
    return Finding(PARAMS_NOT_UPDATING_ID, Severity.ERROR,
                   f"{len(run.backwards)} backward pass(es) but {optimizer.optimizer_type}"
                   f"{seen} never stepped: no parameter is ever updated",
                   str(where) if where else "", NO_STEP_HINT)


def unoptimized_grads_finding(run: ScriptRun) -> Finding | None:
    """The error for parameters that receive gradients at the optimizer steps but that
    no optimizer of the script holds (the optimizer was built before they existed)."""
    names = run.unoptimized_grads
    if not names or not run.applied_steps:
        return None
    return Finding(PARAMS_NOT_UPDATING_ID, Severity.ERROR,
                   f"{len(names)} parameter(s) receive gradients but are in no optimizer: "
                   f"{not_held_phrase(names)}", names[0], NOT_IN_OPTIMIZER_HINT)


def gradless_finding(record: GradlessRecord) -> Finding:
    """The warning for parameters an optimizer holds that never got a gradient while
    its other parameters did (an unused layer, or a graph cut before them)."""
    unused = (f"; {name_list(record.unused_modules, SHOWN)} never ran in forward"
              if record.unused_modules else "")
    return Finding(PARAMS_NOT_UPDATING_ID, Severity.WARNING,
                   f"{len(record.params)} parameter(s) in {record.optimizer_type} never "
                   f"received a gradient, so its steps never change them: "
                   f"{name_list(record.params, SHOWN)}{unused}",
                   str(record.location or record.params[0]), NO_GRADIENT_HINT)
