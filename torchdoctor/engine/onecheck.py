"""Running one check in isolation: the global state it could touch preserved, the
warnings it raises collected, its exceptions turned into a ``crashed`` outcome, and a
reason for every skip."""

from __future__ import annotations

import time
import traceback

from torchdoctor.check import Check, SkipCheck
from torchdoctor.engine.context import CheckContext
from torchdoctor.engine.state import preserved_state
from torchdoctor.engine.warned import collected_warnings
from torchdoctor.findings import CheckResult, Outcome, outcome_for
from torchdoctor.scriptrun.observations import RunStatus, ScriptRun


def run_one_check(check: Check, ctx: CheckContext) -> CheckResult:
    """Run one check in isolation: state restored, exceptions become ``crashed``."""
    started = time.perf_counter()
    if not (check.modes & ctx.modes) and ctx.run is not None and not ctx.models \
            and not ctx.model_skip:
        return CheckResult(check.id, Outcome.SKIPPED, 0.0, [], _no_model_reason(ctx.run))
    if not (check.modes & ctx.modes):
        wanted = " or ".join(sorted(check.modes))
        why = f": {ctx.model_skip}" if ctx.model_skip and "model" in check.modes else ""
        return CheckResult(check.id, Outcome.SKIPPED, 0.0, [],
                           f"needs {wanted} mode; this target offers "
                           f"{' and '.join(sorted(ctx.modes)) or 'neither'}{why}")
    if ctx.run is not None and ctx.run.internal_errors and "script" in check.modes:
        # what the check would read is incomplete: our bug, never a pass or the script's
        return CheckResult(check.id, Outcome.CRASHED, 0.0, [],
                           "torchdoctor's own recording failed while the script ran, so "
                           "what this check reads is incomplete:\n"
                           + ctx.run.internal_errors[0])
    with collected_warnings() as warned:
        result = _run_isolated(check, ctx, started)
    result.warnings = warned
    return result


def _no_model_reason(run: ScriptRun) -> str:
    """Why a model-mode check has no model of a script run to train."""
    if run.status is RunStatus.CRASHED and not run.forwards:
        return "the script crashed before any model ran (see its error), and this check " \
            "trains copies of a model"
    return "no nn.Module: the script trains tensors directly, and this check trains " \
        "copies of a model"


def _run_isolated(check: Check, ctx: CheckContext, started: float) -> CheckResult:
    try:
        with preserved_state(ctx.options.seed) as leaked:
            findings = list(check.run(ctx) or [])
    except SkipCheck as exc:
        return CheckResult(check.id, Outcome.SKIPPED, time.perf_counter() - started, [],
                           str(exc))
    except Exception:  # any check's failure, ours or a plugin's, is reported: crashed
        return CheckResult(check.id, Outcome.CRASHED, time.perf_counter() - started, [],
                           traceback.format_exc())
    seconds = time.perf_counter() - started
    if leaked:
        return CheckResult(check.id, Outcome.CRASHED, seconds, findings,
                           f"left global hooks installed: {', '.join(leaked)}")
    return CheckResult(check.id, outcome_for(findings), seconds, findings)
