"""The Check contract: dispatch by mode in the base class, per-candidate skips, and crash
explanations through the torchdoctor_explain_crash hook."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from torchdoctor.check import Check, SkipCheck
from torchdoctor.engine.context import CheckContext, CheckOptions, ModelCandidate
from torchdoctor.engine.runner import explain_crash, run_one_check
from torchdoctor.findings import Finding, Outcome
from torchdoctor.plugins import make_plugin_manager
from torchdoctor.scriptrun.observations import CodeLocation, ErrorRecord, RunStatus, ScriptRun


class ScriptOnly(Check):
    id = "script-only"

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        return [self.warning(f"saw {run.path}")]


class ModelOnly(Check):
    id = "model-only"

    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        if candidate.name == "bad":
            raise SkipCheck("cannot run this one")
        return [self.info(f"looked at {candidate.name}")]


class Explains(Check):
    id = "explains"

    def explain_crash(self, error: ErrorRecord, run: ScriptRun) -> Finding | None:
        if "boom" not in error.message:
            return None
        return self.error("boom explained", location=error.location, explains_crash=True)


class ExplainsBadly(Check):
    id = "explains-badly"

    def explain_crash(self, error: ErrorRecord, run: ScriptRun) -> Finding | None:
        raise ValueError("our own bug")


def _ctx(models: list[str], run: ScriptRun | None = None) -> CheckContext:
    from torchdoctor.engine.runner import training_setup

    setup = training_setup(CheckOptions(), batch=lambda: (None, None))
    candidates = [ModelCandidate(name, "test", nn.Identity) for name in models]
    return CheckContext("t", CheckOptions(), setup, run, candidates)


def test_modes_are_derived_from_the_methods_implemented() -> None:
    assert ScriptOnly.modes == frozenset({"script"})
    assert ModelOnly.modes == frozenset({"model"})
    assert Explains.modes == frozenset({"script"})


def test_runner_skips_a_check_whose_mode_is_absent() -> None:
    result = run_one_check(ScriptOnly(), _ctx(["net"]))
    assert result.outcome is Outcome.SKIPPED and "needs script mode" in result.detail


def test_a_skipped_candidate_does_not_hide_the_others() -> None:
    result = run_one_check(ModelOnly(), _ctx(["bad", "good"]))
    assert result.outcome is Outcome.PASSED  # info only
    assert [f.message for f in result.findings] == ["looked at good"]


def test_a_check_that_examined_nothing_is_skipped_not_passed() -> None:
    result = run_one_check(ModelOnly(), _ctx(["bad"]))
    assert result.outcome is Outcome.SKIPPED and "cannot run this one" in result.detail


def _crashed_run(message: str) -> ScriptRun:
    error = ErrorRecord("RuntimeError", message, CodeLocation("train.py", 7))
    return ScriptRun("train.py", status=RunStatus.CRASHED, error=error)


def test_crash_explanation_is_owned_by_the_first_check_that_recognises_it() -> None:
    manager = make_plugin_manager(entry_points=False).manager
    run = _crashed_run("boom")
    checks: list[Any] = [ScriptOnly(), Explains(), ExplainsBadly()]
    found = explain_crash(manager, checks, run)
    assert [(f.check, f.message) for f in found] == [("explains", "boom explained")]
    assert manager.get_plugin("check:explains") is None  # unregistered afterwards
    ctx = _ctx([], run)
    ctx.crash_explanations = found
    result = run_one_check(Explains(), ctx)
    assert result.outcome is Outcome.FAILED and result.findings == found


def test_a_raising_explain_crash_becomes_that_checks_crash() -> None:
    manager = make_plugin_manager(entry_points=False).manager
    run = _crashed_run("something else")
    bad = ExplainsBadly()
    assert explain_crash(manager, [Explains(), bad], run) == []
    result = run_one_check(bad, _ctx([], run))
    assert result.outcome is Outcome.CRASHED and "our own bug" in result.detail


@pytest.mark.parametrize("check_id", ["shape-mismatch", "device-mismatch", "loss-function"])
def test_builtin_checks_explain_crashes_through_the_hook(check_id: str) -> None:
    from torchdoctor.checks import builtin_checks

    classes = {cls.id: cls for cls in builtin_checks()}
    assert Check.explain_crash is not classes[check_id].explain_crash
