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
from torchdoctor.diagnoses.numerics import NUMERICS_CHECK
from torchdoctor.findings import Finding

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext, ModelCandidate
    from torchdoctor.scriptrun.observations import OpProblem, ScriptRun

class NumericsCheck(Check):
    """Unsafe expressions in the loss, metrics and forward code, found on the first steps."""

    id = NUMERICS_CHECK
    summary = ("numerically unsafe expressions (log of softmax/sigmoid, hand-written BCE or "
               "log-sum-exp, unbounded exp, division by a sum/std, sqrt at 0)")

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """What the op tracer found over the first steps of the run."""
        if ctx.options.trace_steps <= 0:
            if _model_mode_applies(ctx):
                return []
            raise SkipCheck("op tracing is off (--trace-steps 0)")
        return findings_for(self, run.op_problems)

    def wants_models(self, ctx: CheckContext, script_findings: list[Finding]) -> bool:
        """Model mode adds evidence only where the script did not run the model."""
        return _model_mode_applies(ctx)

    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        """One traced forward and loss of a copy, on the training setup's batch."""
        from torchdoctor.hooks.optrace import trace_loss

        setup = ctx.training_setup(candidate)
        model = ctx.fresh_model(candidate)
        inputs, targets = setup.batch(ctx.options.device)
        try:
            problems = trace_loss(setup.make_loss(), None, targets, model=model,
                                  inputs=inputs)
        except RuntimeError as exc:
            raise SkipCheck(f"the model does not run on this batch ({exc}"[:200] + ")") \
                from exc
        return findings_for(self, problems)


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
