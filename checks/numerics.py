"""numerics: numerically unsafe expressions that train fine for thousands of steps and
then produce inf/NaN (``log(softmax(x))``, ``log(1 - sigmoid(z))``, a hand-written BCE,
``x / x.sum()``, ``sqrt`` at zero...), each with its safe replacement.

Script mode reads what the op tracer (:mod:`torchdoctor.hooks.optrace`) found over the
first steps of the run; model mode traces one forward and loss of a copy of each model
on the training setup's batch (the user's ``torchdoctor_loss()`` when there is one).
The patterns, words and severities live in :mod:`torchdoctor.diagnoses.numerics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchdoctor.check import Check, SkipCheck
from torchdoctor.findings import Finding

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext, ModelCandidate
    from torchdoctor.scriptrun.observations import OpProblem

CHECK_ID = "numerics"  # the same as torchdoctor.diagnoses.numerics.NUMERICS_CHECK


class NumericsCheck(Check):
    """Unsafe expressions in the loss, metrics and forward code, found on the first steps."""

    id = CHECK_ID
    summary = ("numerically unsafe expressions (log of softmax/sigmoid, hand-written BCE or "
               "log-sum-exp, unbounded exp, division by a sum/std, sqrt at 0)")

    def run(self, ctx: CheckContext) -> list[Finding]:
        """Findings from the script run's trace, then from a traced loss per model."""
        traced = ctx.run is not None and ctx.options.trace_steps > 0
        model_mode = "model" in ctx.modes and _model_mode_applies(ctx)
        if not traced and not model_mode:
            raise SkipCheck("op tracing is off (--trace-steps 0) and no model is traced "
                            "on its own")
        problems: list[OpProblem] = list(ctx.run.op_problems) if traced and ctx.run else []
        if model_mode:
            for candidate in ctx.models:
                problems.extend(self._model(ctx, candidate))
        return findings_for(self, problems)

    def _model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[OpProblem]:
        from torchdoctor.hooks.optrace import trace_loss

        setup = ctx.training_setup()
        model = ctx.fresh_model(candidate)
        inputs, targets = setup.batch(ctx.options.device)
        try:
            return trace_loss(setup.make_loss(), None, targets, model=model, inputs=inputs)
        except RuntimeError:
            return []  # the model does not take this batch: shape-mismatch reports it


def _model_mode_applies(ctx: CheckContext) -> bool:
    """A traced reference step adds evidence only for a model the script did not run, or
    with the user's own batch or loss (``torchdoctor_batch()``, ``torchdoctor_loss()``)."""
    source = ctx.training_setup().source
    own = any(source.get(what, "reference") != "reference" for what in ("batch", "loss"))
    return own or ctx.run is None or not ctx.run.forwards


def findings_for(check: Check, problems: list[OpProblem]) -> list[Finding]:
    """One finding per traced problem of ``check``'s id (first per rule and line)."""
    found: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for problem in problems:
        key = (problem.rule, str(problem.location))
        if problem.check != check.id or key in seen:
            continue
        seen.add(key)
        make = check.error if problem.severity == "error" else check.warning
        found.append(make(problem.message, location=problem.location or "",
                          hint=problem.hint))
    return found
