"""The numerics check and the traced broadcasts of shape-mismatch, on the example
programs: each buggy one found with the right id and file:line, each fixed one quiet
(the check ran and passed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.engine.context import CheckOptions
from torchdoctor.engine.runner import diagnose
from torchdoctor.findings import Finding, Outcome, Report, Severity

BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"

CHECK = "numerics"
EXAMPLE = "numerics"  # examples/bugs/numerics.py and its _fixed form


def _line_of(path: Path, text: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i + 1 for i, line in enumerate(lines) if text in line)


def _findings(report: Report, check: str) -> list[Finding]:
    return [f for f in report.findings if f.check == check]


def _ran_quietly(report: Report, check: str) -> None:
    result = report.result(check)
    assert result is not None and result.outcome is Outcome.PASSED, result
    assert _findings(report, check) == []


def test_bug_program_each_unsafe_expression_at_its_line(
        example_reports: dict[str, Report]) -> None:
    found = _findings(example_reports["numerics"], CHECK)
    path = BUGS / "numerics.py"
    where = {f.location: f for f in found}
    expected = {
        "x.std(1, keepdim=True)": ("standard deviation", "epsilon"),
        "torch.log(torch.softmax(": ("log(softmax(x))", "log_softmax"),
        "torch.log(torch.exp(logits)": ("log(exp(x).sum())", "logsumexp"),
    }
    assert len(found) == len(expected)
    for text, (words, fix) in expected.items():
        finding = where[f"examples/bugs/numerics.py:{_line_of(path, text)}"]
        assert finding.severity is Severity.WARNING
        assert words in finding.message and fix in finding.hint


def test_fixed_program_is_quiet(example_reports: dict[str, Report]) -> None:
    _ran_quietly(example_reports["numerics_fixed"], CHECK)


@pytest.mark.slow
def test_hand_written_bce_and_sqrt_at_zero() -> None:
    path = BUGS / "numerics_binary.py"
    found = _findings(diagnose(str(path), select=[CHECK]), CHECK)
    assert [(f.location, f.severity) for f in found] == [
        (f"examples/bugs/numerics_binary.py:{_line_of(path, 'bce = ')}", Severity.WARNING),
        (f"examples/bugs/numerics_binary.py:{_line_of(path, 'calibration = ')}",
         Severity.WARNING)]
    assert "BCEWithLogitsLoss" in found[0].hint and "1e-8" in found[1].hint
    _ran_quietly(diagnose(str(BUGS / "numerics_binary_fixed.py"), select=[CHECK]), CHECK)


@pytest.mark.slow
def test_hand_written_loss_and_accuracy_broadcasts_are_shape_mismatch() -> None:
    path = BUGS / "shape_mismatch_broadcast.py"
    found = _findings(diagnose(str(path), select=["shape-mismatch"]), "shape-mismatch")
    assert [(f.location, f.severity) for f in found] == [
        (f"examples/bugs/shape_mismatch_broadcast.py:{_line_of(path, 'loss = ((')}",
         Severity.ERROR),
        (f"examples/bugs/shape_mismatch_broadcast.py:{_line_of(path, 'correct += ')}",
         Severity.ERROR)]
    assert found[0].message.startswith("(64, 1) - (64,) -> (64, 64)")
    assert "squeeze(1)" in found[0].hint
    fixed = diagnose(str(BUGS / "shape_mismatch_broadcast_fixed.py"), select=["shape-mismatch"])
    _ran_quietly(fixed, "shape-mismatch")


@pytest.mark.slow
def test_trace_steps_zero_turns_the_tracer_off() -> None:
    report = diagnose(str(BUGS / "shape_mismatch_broadcast.py"),
                      CheckOptions(trace_steps=0), select=["shape-mismatch", CHECK])
    assert _findings(report, "shape-mismatch") == []
    numerics = report.result(CHECK)
    assert numerics is not None and numerics.outcome is Outcome.SKIPPED
    assert "--trace-steps 0" in numerics.detail


def test_model_mode_traces_the_users_loss_hook(write_program) -> None:  # type: ignore[no-untyped-def]
    path = write_program('''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def torchdoctor_loss():
    def loss(logits, targets):
        return nn.functional.nll_loss(torch.log(torch.softmax(logits, 1)), targets)
    return loss
''')
    report = diagnose(f"{path}::Net", select=[CHECK])
    found = _findings(report, CHECK)
    assert [f.location.rsplit(":", 1)[-1] for f in found] == [
        str(_line_of(path, "torch.log(torch.softmax"))]
