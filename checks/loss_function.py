"""loss-function: inputs that do not suit the loss.

Softmax (or log_softmax) output fed to CrossEntropyLoss, sigmoid output fed to
BCEWithLogitsLoss, raw scores fed to NLLLoss, targets of the wrong dtype or range.
The diagnosis (rules, words, fixes, the crashes recognised) is
:mod:`torchdoctor.diagnoses.loss_inputs`'s, shared with ``check_loss_inputs``.

Script mode judges every loss call the instrument recorded (summaries of prediction and
target), and recognises the exception torch raises for such inputs when it ended the
script. Model mode looks at a copy's output on a batch (the shared forward probe,
:meth:`~torchdoctor.engine.context.CheckContext.forward_probe`). With the reference loss
(assumed, not the user's own) only softmax outputs are judged: log-softmax outputs are
right for NLLLoss. "Sigmoid output" is read from a value range that raw logits of a
one-output model also show at init, so it is confirmed by the model's last operation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from torchdoctor.check import Check, SkipCheck
from torchdoctor.diagnoses.final_layer import FinalActivation
from torchdoctor.diagnoses.loss_inputs import (
    LOSS_CHECK,
    NEEDS_STRUCTURE,
    classification_problems,
    crash_problem,
)
from torchdoctor.diagnoses.loss_rules import LossInputProblem
from torchdoctor.errors import UserCodeError
from torchdoctor.findings import Finding, Severity
from torchdoctor.scriptrun.observations import TensorSummary

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext, ModelCandidate, TrainingSetup
    from torchdoctor.scriptrun.observations import ErrorRecord, LossRecord, ScriptRun


class LossFunctionCheck(Check):
    """Loss inputs that make training slow or wrong, or crash it."""

    id = LOSS_CHECK
    summary = "softmax before CrossEntropyLoss, sigmoid before BCEWithLogitsLoss, bad targets"

    def explain_crash(self, error: ErrorRecord, run: ScriptRun) -> Finding | None:
        """A loss call that crashed the script (wrong target dtype, range...)."""
        crash = crash_problem(error)
        if crash is None:
            return None
        first_line = error.message.splitlines()[0] if error.message else ""
        return self.error(f"{crash.message}: the script raised {error.type_name}: "
                          f"{first_line}", location=error.location or run.path,
                          hint=crash.hint, explains_crash=True)

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """The problems of the loss calls the script made, one finding per kind."""
        return self._record_findings(ctx, run, _crash_kinds(run))

    def wants_models(self, ctx: CheckContext, script_findings: list[Finding]) -> bool:
        """Model copies only when the script did not run its own loss."""
        return not _script_knows_loss(ctx)

    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        """The problems of a copy's output as input to the setup's loss."""
        kinds = _crash_kinds(ctx.run) if ctx.run is not None else set()
        return self._model_findings(ctx, candidate, kinds)

    def _record_findings(self, ctx: CheckContext, run: ScriptRun,
                         kinds: set[str]) -> list[Finding]:
        findings = []
        examined = sum(1 for r in run.losses if r.prediction.min is not None)
        for problem, records in _grouped_problems(run.losses).items():
            if problem.kind in kinds:
                continue
            kinds.add(problem.kind)
            context = f"seen in {len(records)} of {examined} loss calls examined"
            kept = _confirm(problem, _script_final_activation(ctx)) \
                if problem.kind == NEEDS_STRUCTURE else problem
            if kept is not None:
                findings.append(self._finding(kept, context, records[0].location))
        return findings

    def _model_findings(self, ctx: CheckContext, candidate: ModelCandidate,
                        kinds: set[str]) -> list[Finding]:
        seen = _model_output(ctx, candidate)
        if seen is None:
            return []
        findings = []
        for found in _model_problems(ctx.training_setup(candidate), seen):
            problem = _confirm(found, (True, seen.final)) \
                if found.kind == NEEDS_STRUCTURE else found
            if problem is None or problem.kind in kinds:
                continue
            kinds.add(problem.kind)
            findings.append(self._finding(problem, f"{candidate.name}'s output on a batch",
                                          seen.location))
        return findings

    def _finding(self, problem: LossInputProblem, context: str, location: object) -> Finding:
        message = f"{problem.message} ({context})"
        if problem.severity is Severity.ERROR:
            return self.error(message, location=location, hint=problem.hint)
        if problem.severity is Severity.WARNING:
            return self.warning(message, location=location, hint=problem.hint)
        return self.info(message, location=location, hint=problem.hint)


def _crash_kinds(run: ScriptRun) -> set[str]:
    """The kind of loss problem that crashed the script, so it is said once."""
    crash = crash_problem(run.error) if run.error is not None else None
    return {crash.kind} if crash is not None else set()


def _script_knows_loss(ctx: CheckContext) -> bool:
    """With the reference loss, a script that ran its own loss already told us."""
    assumed = ctx.setup is None or not ctx.setup.user_gave("loss")
    return assumed and ctx.run is not None and bool(ctx.run.losses)


def _grouped_problems(losses: list[LossRecord]) -> dict[LossInputProblem, list[LossRecord]]:
    """Each distinct problem (by kind) with the loss calls that show it, first seen first."""
    grouped: dict[LossInputProblem, list[LossRecord]] = {}
    for record in losses:
        for problem in classification_problems(record.loss, record.prediction, record.target,
                                     record.options):
            same = next((p for p in grouped if p.kind == problem.kind), problem)
            grouped.setdefault(same, []).append(record)
    return grouped


def _confirm(problem: LossInputProblem,
             known: tuple[bool, FinalActivation | None]) -> LossInputProblem | None:
    """A sigmoid-output problem stands when the model's last operation is a sigmoid,
    goes when it is something else, and is only a warning when that is unknown."""
    structure_known, final = known
    if final is not None and final.name.lower() == "sigmoid":
        return problem
    if structure_known:
        return None
    return LossInputProblem(problem.kind, Severity.WARNING,
                            problem.message + " (if the model ends in a sigmoid)", problem.hint)


def _script_final_activation(ctx: CheckContext) -> tuple[bool, FinalActivation | None]:
    """(whether known, the activation) that ends the script's first model, found by
    running a copy on random inputs shaped like the ones the script gave it."""
    from torchdoctor.diagnoses.final_layer import final_activation

    run = ctx.run
    models = ctx.found_models or ctx.models
    if run is None or not models or not run.forwards or not run.forwards[0].inputs:
        return False, None
    from torchdoctor.tensors import set_training

    candidate = models[0]
    inputs = _inputs_like(run.forwards[0].inputs, ctx.options.device)
    model = set_training(ctx.fresh_model(candidate), False)
    try:
        return True, final_activation(model, inputs, candidate.name)
    except UserCodeError:  # the user's model does not run on inputs shaped like these
        return False, None


def _inputs_like(summaries: tuple[TensorSummary, ...], device: str) -> object:
    import torch

    tensors = [torch.rand(s.shape, device=device) if s.is_floating else
               torch.zeros(s.shape, dtype=getattr(torch, s.dtype.replace("torch.", "")),
                           device=device) for s in summaries]
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


class _ModelOutput(NamedTuple):
    loss: str
    prediction: TensorSummary
    target: TensorSummary | None
    location: str
    final: FinalActivation | None


def _model_output(ctx: CheckContext, candidate: ModelCandidate) -> _ModelOutput | None:
    """What a copy gives on the setup's batch (the shared forward probe) and which loss it
    goes to, or None when the model does not run on it or returns no float tensor."""
    import torch

    from torchdoctor.diagnoses.final_layer import final_activation_after
    from torchdoctor.synth import main_output
    from torchdoctor.tensors import summarize
    from torchdoctor.validators import loss_name_of

    probe = ctx.forward_probe(candidate)
    if not probe.ran:  # examined nothing: never "passed"
        raise SkipCheck("the batch does not run through the model (see shape-mismatch)")
    output = main_output(probe.output)  # the logits of a tuple, dict or dataclass output
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None  # no float prediction: nothing a loss-input rule applies to
    last = final_activation_after(probe.last_leaf, probe.model, candidate.name)
    targets = probe.targets
    target = summarize(targets) if isinstance(targets, torch.Tensor) else None
    where = last.location if last is not None else f"{candidate.name}: output"
    return _ModelOutput(loss_name_of(ctx.training_setup(candidate).make_loss()),
                        summarize(output),
                        target, where, last)


def _model_problems(setup: TrainingSetup, seen: _ModelOutput) -> list[LossInputProblem]:
    """The loss-input problems of a model's output. With the reference loss (assumed:
    the user may really train with NLLLoss, MSELoss...) or a synthetic one, only
    probabilities are judged,
    as no classification loss wants softmax output, and the message says so."""
    if setup.user_gave("loss"):
        return classification_problems(seen.loss, seen.prediction, seen.target)
    if not seen.prediction.rows_sum_to_one:
        return []
    return [LossInputProblem(p.kind, p.severity, p.message + " (assuming the reference "
                             "CrossEntropyLoss; define torchdoctor_loss() to name yours)",
                             p.hint)
            for p in classification_problems("CrossEntropyLoss", seen.prediction, None)]
