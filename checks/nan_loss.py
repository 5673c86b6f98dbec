"""``nan-loss``: the loss, gradients or weights became NaN/inf.

Script mode reads the first :class:`~torchdoctor.observations.NonFiniteRecord` of the
run (the instrument already localised it by replaying the bad step with per-module
hooks) and the forward/loss/step records around it. Model mode trains a copy on one
batch for up to 30 steps and, at the first non-finite value, replays that step with
hooks (:mod:`torchdoctor.diagnoses.nonfinite_replay`); it runs only when script mode
found nothing, so one NaN is not reported twice. Both reduce what they saw to an
``Evidence`` that :mod:`torchdoctor.diagnoses.nonfinite` (shared with ``watch()``, the
hooks and ``assert_finite``) turns into the words, a likely cause and its fix.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torchdoctor.check import Check, SkipCheck
from torchdoctor.diagnoses.nonfinite import (
    NONFINITE_CHECK_ID,
    Evidence,
    describe_module,
    explain,
)
from torchdoctor.findings import Finding

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext, ModelCandidate
    from torchdoctor.scriptrun.observations import (
        ForwardRecord,
        LossRecord,
        NonFiniteRecord,
        ScriptRun,
        StepRecord,
    )


class NanLossCheck(Check):
    """Finds where and why the loss, gradients or weights went NaN/inf."""

    id = NONFINITE_CHECK_ID
    summary = "loss, gradients or weights become NaN/inf: where it starts and why"

    # -- script mode --------------------------------------------------------------
    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """The first non-finite loss, gradient or weight the run recorded."""
        if not run.nonfinite:
            return []
        record = run.nonfinite[0]
        evidence = _script_evidence(run, record)
        location = record.location or evidence.where
        return [self._finding(evidence, location)]

    # -- model mode ---------------------------------------------------------------
    def wants_models(self, ctx: CheckContext, script_findings: list[Finding]) -> bool:
        """Train copies only when the script showed no NaN/inf."""
        return not script_findings

    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        """Train a copy for a few steps and look for the first NaN/inf."""
        try:
            evidence = _probe(ctx, candidate)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            # a model the setup cannot train is another check's finding
            raise SkipCheck(f"could not train a copy: {type(exc).__name__}: {exc}") from exc
        if evidence is None:
            return []
        location = f"{candidate.name}: {evidence.where or candidate.origin}"
        return [self._finding(evidence, location, f"{candidate.name}: ")]

    def _finding(self, evidence: Evidence, location: object, prefix: str = "") -> Finding:
        message, hint = explain(evidence, prefix)
        return self.error(message, location=location, hint=hint)


def _probe(ctx: CheckContext, candidate: ModelCandidate) -> Evidence | None:
    from torchdoctor.diagnoses.nonfinite_replay import train_until_nonfinite

    return train_until_nonfinite(ctx.fresh_model(candidate), ctx.training_setup(candidate),
                                 ctx.options.device)


def _script_evidence(run: ScriptRun, record: NonFiniteRecord) -> Evidence:
    """The evidence about ``record``, completed from the records of the same step."""
    forward = _forward_at(run, record.step_count)
    loss = _loss_at(run, record.step_count)
    step = _last_step_before(run, record.step_count)
    history = [v for v in record.loss_history if math.isfinite(v)]
    inputs_finite = forward is None or all(s.finite for s in forward.inputs)
    return Evidence(
        steps_before=record.step_count,
        kind=record.kind,
        where=_script_where(record, loss, inputs_finite),
        loss_history=tuple(history),
        lr=record.lr if record.lr is not None else (step.lr if step else None),
        optimizer_type=step.optimizer_type if step else "",
        inputs_finite=inputs_finite,
        output_finite=_output_finite(forward, loss),
        dtype=_dtype(forward, loss),
        detail=record.detail,
    )


def _forward_at(run: ScriptRun, step_count: int) -> ForwardRecord | None:
    """The forward of that step: the first with a non-finite output, else the first
    training one."""
    here = [f for f in run.forwards if f.step_count == step_count]
    bad = [f for f in here if f.output is not None and not f.output.finite]
    training = [f for f in here if f.training and f.grad_enabled]
    chosen = bad or training or here
    return chosen[0] if chosen else None


def _loss_at(run: ScriptRun, step_count: int) -> LossRecord | None:
    """The loss of that step: the first non-finite one, else the first."""
    here = [x for x in run.losses if x.step_count == step_count]
    bad = [x for x in here if x.value is not None and not math.isfinite(x.value)]
    chosen = bad or here
    return chosen[0] if chosen else None


def _last_step_before(run: ScriptRun, step_count: int) -> StepRecord | None:
    applied = run.applied_steps[:max(step_count, 1)]
    return applied[-1] if applied else None


def _script_where(record: NonFiniteRecord, loss: LossRecord | None,
                  inputs_finite: bool) -> str:
    if record.module is not None:
        return describe_module(record.module, made_here=inputs_finite)
    if record.kind == "loss":
        return f"the loss function ({loss.loss})" if loss else "the loss computation"
    return record.where


def _output_finite(forward: ForwardRecord | None, loss: LossRecord | None) -> bool | None:
    if forward is not None and forward.output is not None:
        return forward.output.finite
    return loss.prediction.finite if loss is not None else None


def _dtype(forward: ForwardRecord | None, loss: LossRecord | None) -> str:
    if forward is not None and forward.output is not None:
        return forward.output.dtype
    return loss.prediction.dtype if loss is not None else ""
