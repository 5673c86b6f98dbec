"""Train/eval mode misuse: the id, the words and the fixes, for every front end.

The eval-mode check reads a script run's forwards (script mode) and runs copies twice
in eval mode (model mode, :mod:`.eval_randomness`); ``watch()`` follows the modes of
the forwards of a user's loop (:mod:`torchdoctor.monitor.modes`);
:func:`torchdoctor.testing.assert_eval_deterministic` runs the model twice in eval mode.
They see the same three bugs with more or less evidence, and report them here:

1. evaluation while the model is in training mode (no ``model.eval()``): Dropout and
   BatchNorm behave as in training, so the metrics are noisy and wrong;
2. training in eval mode (``model.eval()`` for the test loop, never ``model.train()``
   again): Dropout is off and BatchNorm stops learning its statistics;
3. randomness that ``model.eval()`` does not switch off (``F.dropout`` without
   ``training=self.training``); other randomness (sampling, Python's ``random``, a
   random depth) can be the model's design: a warning, naming what drew;

and, as a warning, evaluation without ``torch.no_grad()``. For a model without
mode-sensitive modules, (1) and (2) change nothing: they are only worth an info.
No torch at module level: the check imports it while listing checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchdoctor.diagnoses.wording import name_list
from torchdoctor.findings import Finding, Severity

if TYPE_CHECKING:
    from torch import nn

#: the finding id, in every front end
FINDING_ID = "eval-mode"
#: the one-line summary of the bug class (``torchdoctor list-checks``)
SUMMARY = "evaluation in training mode, training in eval mode, randomness in eval()"
#: mode-sensitive module names quoted before "and N more"
SHOWN = 4

EVAL_HINT = ("call `model.eval()` before the evaluation loop (and `model.train()` "
             "before training again), and evaluate under `with torch.no_grad():`")
TRAIN_HINT = ("call `model.train()` at the start of each epoch's training loop (training "
              "resumes after evaluation)")
NO_GRAD_HINT = ("wrap the evaluation loop in `with torch.no_grad():` (or "
                "`torch.inference_mode()`): it saves the memory and time of building a graph")
SAMPLING_HINT = ("fine if the model is random by design (a VAE's reparameterisation, a "
                 "policy's action, a random depth); noise, augmentation and dropout must "
                 "depend on `self.training`")
RANDOM_HINT = ("use nn.Dropout modules (model.eval() switches them off) or write "
               "`F.dropout(x, p, training=self.training)`; guard other random operations "
               "(torch.rand*, noise) with `if self.training:`")


def evaluated_in_train_mode(subject: str, evidence: str, sensitive: list[str], *,
                            location: str, certain: bool = True) -> Finding:
    """Bug 1. ``evidence`` says what was seen (``3 forward passes without a backward
    pass``); ``certain`` is False where the evidence may have an innocent reading (one
    forward under no_grad): a warning then, not an error."""
    message = f"{subject} is evaluated in training mode: {evidence}"
    if not sensitive:
        return Finding(FINDING_ID, Severity.INFO, message + "; harmless for this model (no "
                       "Dropout/BatchNorm), but it will matter once one is added",
                       location, EVAL_HINT)
    return Finding(FINDING_ID, Severity.ERROR if certain else Severity.WARNING,
                   message + f", so {_modules(sensitive)} behave as in training (dropout on, "
                   "batch-norm statistics updated) and the evaluation results are noisy and "
                   "wrong", location, EVAL_HINT)


def trained_in_eval_mode(subject: str, evidence: str, sensitive: list[str], *,
                         location: str, resumed: bool) -> Finding:
    """Bug 2. ``resumed``: training went on after ``model.eval()`` (rather than
    starting in eval mode)."""
    when = ("training resumed after `model.eval()` without `model.train()`" if resumed
            else "it is trained in eval mode")
    message = f"{subject}: {when}: {evidence}"
    if not sensitive:
        return Finding(FINDING_ID, Severity.INFO, message + "; harmless for this model (no "
                       "Dropout/BatchNorm)", location, TRAIN_HINT)
    return Finding(FINDING_ID, Severity.ERROR,
                   message + f", so {_modules(sensitive)} do not regularise or learn batch "
                   "statistics (dropout off, batch norm using running statistics)",
                   location, TRAIN_HINT)


def evaluated_with_grad(subject: str, evidence: str, *, location: str) -> Finding:
    """Evaluation in eval mode but without ``torch.no_grad()`` (a warning)."""
    return Finding(FINDING_ID, Severity.WARNING,
                   f"{subject} is evaluated with gradients enabled: {evidence} in eval mode "
                   "without `torch.no_grad()` build an autograd graph that is never used",
                   location, NO_GRAD_HINT)


def random_in_eval(subject: str, culprit: str, forward_of: str, before: str, *,
                   functional_dropout: bool, drawn: str = "") -> str:
    """Bug 3: the code of ``forward_of``.forward stays random; ``culprit`` is the module
    whose output differed, ``before`` the call its randomness comes before (empty when
    the culprit's own inputs were equal). ``drawn``: what drew random numbers, when known
    (``torch.randn_like``, ``Python's `random```...)."""
    if before:
        seen = (f"the input of {before} differs between the runs although every module "
                f"before it returned the same output, so something in {forward_of}.forward, "
                f"before {before},")
    else:
        seen = (f"{culprit} returns different outputs for identical inputs, so something in "
                f"{forward_of}.forward")
    random = (f"draws random numbers ({drawn}) after `model.eval()`" if drawn
              else "stays random after `model.eval()`")
    message = (f"{subject} gives different outputs for the same input in eval mode: {seen} "
               f"{random}")
    if functional_dropout:
        message += " (a functional dropout without `training=self.training`)"
    return message


def branches_on_randomness(subject: str, first: str, second: str) -> str:
    """Bug 3, when the two eval-mode runs did not even call the same modules."""
    return (f"{subject} gives different outputs for the same input in eval mode: the two "
            f"runs called different modules ({first} vs {second}), so its forward() "
            "branches on random numbers after `model.eval()`")


def forward_count(count: int, what: str) -> str:
    """``1 forward pass without a backward pass`` / ``3 forward passes ...``."""
    passes = "1 forward pass" if count == 1 else f"{count} forward passes"
    return f"{passes} {what}"


def _modules(names: list[str]) -> str:
    return f"its mode-sensitive modules ({name_list(names, SHOWN)})"


def mode_sensitive(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The submodules whose behaviour changes with train()/eval(): dropout, batch norm,
    and instance norm when it tracks running statistics (else it computes the same in
    both modes)."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd
    from torch.nn.modules.instancenorm import _InstanceNorm

    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, _InstanceNorm) and not module.track_running_stats:
            continue
        if isinstance(module, (_DropoutNd, _BatchNorm, _InstanceNorm)):
            found.append((name, module))
    return found
