"""eval-mode: train/eval mode misuse.

Script mode reads the forwards the instrument recorded (``training`` flag, grad mode,
whether a backward pass followed) and finds three faults:

1. evaluation while the model is in training mode (no ``model.eval()``): Dropout and
   BatchNorm behave as in training, so the metrics are noisy and wrong;
2. training in eval mode (``model.eval()`` for the test loop, never ``model.train()``
   again): Dropout is off and BatchNorm stops learning its statistics;
3. evaluation without ``torch.no_grad()``: a graph is built for nothing (a warning).

For a model without mode-sensitive modules (1) and (2) change nothing, so they are
only reported as info. Model mode puts a copy in eval mode and runs the same batch
twice: different outputs mean something stays random in eval mode (``F.dropout``
without ``training=self.training``), pinned to the module whose code does it.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from torchdoctor.check import Check
from torchdoctor.findings import Finding
from torchdoctor.scriptrun.observations import ForwardRecord, ObservedModel, RunStatus, ScriptRun

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext, ModelCandidate

_EVAL_HINT = ("call `model.eval()` before the evaluation loop (and `model.train()` "
              "before training again), and evaluate under `with torch.no_grad():`")
_TRAIN_HINT = "call `model.train()` at the start of each epoch's training loop"
_NO_GRAD_HINT = ("wrap the evaluation loop in `with torch.no_grad():` (or "
                 "`torch.inference_mode()`): it saves the memory and time of building a graph")


class EvalModeCheck(Check):
    """Train/eval mode misuse in the training script, and randomness left in eval mode."""

    id = "eval-mode"
    summary = "evaluation in training mode, training in eval mode, randomness in eval()"

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """Mode misuse in the forwards the run recorded, model by model."""
        return [f for observed in run.models for f in self._script_findings(run, observed)]

    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        """A copy in eval() run twice on one batch must give the same output (sampling
        such as a VAE's randn_like is only a warning: it can be the model itself)."""
        from ._eval_mode_impl import eval_nondeterminism

        found = eval_nondeterminism(ctx, candidate)
        if found is None:
            return []
        report = self.warning if found.deliberate else self.error
        return [report(found.message, location=found.location, hint=found.hint)]

    def _script_findings(self, run: ScriptRun, observed: ObservedModel) -> list[Finding]:
        forwards = _settled_forwards(run, run.forwards_of(observed.index))
        trained = _trained(forwards)
        evals = _evaluation_forwards(forwards, trained)
        findings = []
        in_train_mode = [f for f in evals if f.training]
        if in_train_mode:
            findings.append(self._evaluated_in_train_mode(observed, in_train_mode))
        in_eval_mode = [f for f in forwards if f.index in trained and not f.training]
        if in_eval_mode:
            resumed = any(f.index in trained and f.training for f in forwards
                          if f.index < in_eval_mode[0].index)
            findings.append(self._trained_in_eval_mode(observed, in_eval_mode, resumed))
        with_grad = [f for f in evals if not f.training and f.grad_enabled]
        if with_grad:
            findings.append(self.warning(
                f"{observed.type_name} is evaluated with gradients enabled: "
                f"{_count(with_grad)} in eval mode without `torch.no_grad()` build an "
                "autograd graph that is never used", location=with_grad[0].location,
                hint=_NO_GRAD_HINT))
        return findings

    def _evaluated_in_train_mode(self, observed: ObservedModel,
                                 forwards: list[ForwardRecord]) -> Finding:
        message = (f"{observed.type_name} is evaluated in training mode: {_count(forwards)} "
                   "without a backward pass ran with `model.training == True`")
        if not observed.mode_sensitive:
            return self.info(message + "; harmless for this model (no Dropout/BatchNorm), "
                             "but it will matter once one is added",
                             location=forwards[0].location, hint=_EVAL_HINT)
        return self.error(message + f", so {_sensitive(observed)} behave as in training and "
                          "the evaluation results are noisy and wrong",
                          location=forwards[0].location, hint=_EVAL_HINT)

    def _trained_in_eval_mode(self, observed: ObservedModel, forwards: list[ForwardRecord],
                              resumed: bool) -> Finding:
        when = ("training resumed after `model.eval()` without `model.train()`" if resumed
                else "it is trained in eval mode")
        message = (f"{observed.type_name}: {when}: {_count(forwards)} followed by a "
                   "backward pass ran with `model.training == False`")
        if not observed.mode_sensitive:
            return self.info(message + "; harmless for this model (no Dropout/BatchNorm)",
                             location=forwards[0].location, hint=_TRAIN_HINT)
        return self.error(message + f", so {_sensitive(observed)} do not regularise or "
                          "learn batch statistics", location=forwards[0].location,
                          hint=_TRAIN_HINT)


def _settled_forwards(run: ScriptRun, forwards: list[ForwardRecord]) -> list[ForwardRecord]:
    """Drop the last forward of an interrupted run: it never had the chance of a
    backward pass, so it must not be taken for an evaluation."""
    if run.status is RunStatus.COMPLETED or not run.forwards:
        return forwards
    last = run.forwards[-1]
    return [f for f in forwards if f.index != last.index or f.backward_followed]


def _trained(forwards: list[ForwardRecord]) -> set[int]:
    """Indices of the forwards that were trained on: a backward pass flowed through
    their output, or an optimizer step ran before the model's next forward (this also
    covers a loss built from a second output, which the backward mark cannot see). A
    forward under no_grad is never trained on: another model's optimizer stepping (a
    frozen teacher, a GAN's other half) says nothing about it."""
    trained = {f.index for f in forwards if f.backward_followed}
    for current, following in itertools.pairwise(forwards):
        if following.step_count > current.step_count and current.grad_enabled:
            trained.add(current.index)
    return trained


def _evaluation_forwards(forwards: list[ForwardRecord],
                         trained: set[int]) -> list[ForwardRecord]:
    """Forwards that evaluate: not trained on, and either grad mode was off or they ran
    in a DataLoader pass where nothing was trained. A lone forward outside any loader
    with grad on (a shape smoke test, lazy-module init) is not counted."""
    trained_passes = {f.loader_pass for f in forwards if f.index in trained}
    return [f for f in forwards if f.index not in trained and (
        not f.grad_enabled or (f.loader_pass >= 0 and f.loader_pass not in trained_passes))]


def _count(forwards: list[ForwardRecord]) -> str:
    return "1 forward pass" if len(forwards) == 1 else f"{len(forwards)} forward passes"


def _sensitive(observed: ObservedModel) -> str:
    names = observed.mode_sensitive
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"its mode-sensitive modules ({shown})"
