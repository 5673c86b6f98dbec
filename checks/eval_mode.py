"""eval-mode: train/eval mode misuse (the bugs, words and fixes are
:mod:`torchdoctor.diagnoses.eval_mode`'s, shared with ``watch()`` and the helpers).

Script mode reads the forwards the instrument recorded (``training`` flag, grad mode,
whether a backward pass followed) and decides which of them evaluated and which trained:
evaluation in training mode, training in eval mode, evaluation without
``torch.no_grad()``. Model mode puts a copy in eval mode and runs the same batch twice
(:mod:`torchdoctor.diagnoses.eval_randomness`): different outputs mean something stays
random in eval mode (``F.dropout`` without ``training=self.training``), pinned to the
module whose code does it.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from torchdoctor.check import Check
from torchdoctor.diagnoses import eval_mode
from torchdoctor.findings import Finding
from torchdoctor.scriptrun.observations import ForwardRecord, ObservedModel, RunStatus, ScriptRun

if TYPE_CHECKING:
    from torch import nn

    from torchdoctor.engine.context import CheckContext, ModelCandidate


class EvalModeCheck(Check):
    """Train/eval mode misuse in the training script, and randomness left in eval mode."""

    id = eval_mode.FINDING_ID
    summary = eval_mode.SUMMARY

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """Mode misuse in the forwards the run recorded, model by model."""
        return [f for observed in run.models for f in _script_findings(run, observed)]

    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        """A copy in eval() run twice on one batch must give the same output (randomness
        other than a dropout, such as a VAE's randn_like or a depth drawn with Python's
        random, is only a warning: it can be the model itself)."""
        from torchdoctor.diagnoses.eval_randomness import CHECK_TOLERANCE, eval_randomness
        from torchdoctor.tensors import set_training

        inputs, _ = ctx.training_setup(candidate).batch(ctx.options.device)
        model = set_training(ctx.fresh_model(candidate), False)
        if not _takes(model, inputs):
            return []  # the batch does not fit the model: other checks say why
        found = eval_randomness(model, inputs, subject=candidate.name,
                                prefix=f"{candidate.name}: ",
                                tolerance=CHECK_TOLERANCE)
        return [] if found is None else [found.finding]


def _takes(model: nn.Module, inputs: Any) -> bool:
    """Whether one eval-mode forward of the user's model on ``inputs`` runs (only the
    user's code is guarded: our own analysis after it must crash loudly)."""
    import torch

    from torchdoctor.engine.state import preserved_state
    from torchdoctor.reference.trainer import forward

    # every RNG the forward may draw from (torch's, Python's random...) is restored
    with preserved_state(), torch.no_grad():
        try:
            forward(model, inputs)
        except Exception:  # the user's model raised
            return False
    return True


def _script_findings(run: ScriptRun, observed: ObservedModel) -> list[Finding]:
    forwards = _settled_forwards(run, run.forwards_of(observed.index))
    trained = _trained(forwards)
    evals = _evaluation_forwards(forwards, trained)
    subject, sensitive = observed.type_name, observed.mode_sensitive
    findings = []
    in_train_mode = [f for f in evals if f.training]
    if in_train_mode:
        findings.append(eval_mode.evaluated_in_train_mode(
            subject, eval_mode.forward_count(len(in_train_mode), "without a backward pass "
                                             "ran with `model.training == True`"),
            sensitive, location=_where(in_train_mode)))
    in_eval_mode = [f for f in forwards if f.index in trained and not f.training]
    if in_eval_mode:
        resumed = any(f.index in trained and f.training for f in forwards
                      if f.index < in_eval_mode[0].index)
        findings.append(eval_mode.trained_in_eval_mode(
            subject, eval_mode.forward_count(len(in_eval_mode), "followed by a backward "
                                             "pass ran with `model.training == False`"),
            sensitive, location=_where(in_eval_mode), resumed=resumed))
    with_grad = [f for f in evals if not f.training and f.grad_enabled]
    if with_grad:
        findings.append(eval_mode.evaluated_with_grad(
            subject, eval_mode.forward_count(len(with_grad), "").rstrip(),
            location=_where(with_grad)))
    return findings


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


def _where(forwards: list[ForwardRecord]) -> str:
    """The location of the first of ``forwards``."""
    return str(forwards[0].location or "")
