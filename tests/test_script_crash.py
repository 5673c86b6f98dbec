"""The exception that ends a script: an error, unless torchdoctor's batch caps probably
caused it (a per-class accuracy dividing by zero after a capped test pass, as in
pytorch/tutorials cifar10_tutorial), then a warning that names the caps."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.helpers import findings_of
from torchdoctor.diagnoses.script_crash import crash_finding
from torchdoctor.engine.context import CheckOptions
from torchdoctor.engine.runner import diagnose
from torchdoctor.findings import ExitCode, Severity
from torchdoctor.scriptrun.observations import (
    CodeLocation,
    ErrorRecord,
    PassRecord,
    RunStatus,
    ScriptRun,
)

#: 200 samples sorted by class (20 each), a test pass in that order: a capped pass of 4
#: batches of 4 sees class 0 only, and the per-class accuracy divides by zero
PER_CLASS = """
    import torch, torch.nn as nn
    from torch.utils.data import DataLoader, TensorDataset
    torch.manual_seed(0)
    X = torch.randn(200, 8); Y = torch.arange(200) // 20
    train = DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=True)
    test = DataLoader(TensorDataset(X, Y), batch_size=4)
    model = nn.Linear(8, 10); opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for x, y in train:
        opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    correct = [0.0] * 10; total = [0.0] * 10
    model.eval()
    with torch.no_grad():
        for x, y in test:
            pred = model(x).argmax(1)
            for i in range(len(y)):
                correct[y[i]] += float(pred[i] == y[i]); total[y[i]] += 1
    for c in range(10):
        print(c, 100 * correct[c] / total[c])
"""

#: every pass shorter than --limit-batches (nothing capped), and a real division by zero
GENUINE = """
    import torch, torch.nn as nn
    from torch.utils.data import DataLoader, TensorDataset
    torch.manual_seed(0)
    X = torch.randn(8, 8); Y = torch.arange(8) % 2
    train = DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=True)
    model = nn.Linear(8, 2); opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for x, y in train:
        opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    seen = 0
    print("accuracy", 100 * 3 / seen)
"""


def _program(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def _division_line(path: Path) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if " / " in line)


@pytest.mark.slow
def test_a_division_by_zero_after_capped_passes_is_a_warning_naming_the_caps(
        tmp_path: Path) -> None:
    path = _program(tmp_path, PER_CLASS)
    report = diagnose(str(path))
    [finding] = findings_of(report, "target")
    assert finding.severity is Severity.WARNING
    assert "ZeroDivisionError" in finding.message and "capped" in finding.message
    assert "test" in finding.message  # the capped phase is named
    assert f"torchdoctor check {path} --limit-batches N" in finding.hint
    assert finding.location == f"{path}:{_division_line(path)}"  # the traceback's line
    assert report.errors == [] and report.exit_code is ExitCode.OK


@pytest.mark.slow
def test_the_same_program_given_whole_passes_runs_to_its_end(tmp_path: Path) -> None:
    report = diagnose(str(_program(tmp_path, PER_CLASS)), CheckOptions(limit_batches=50))
    assert not any(p["capped"] for p in report.phases if p["phase"] == "test")
    assert findings_of(report, "target") == [] and report.errors == []


@pytest.mark.slow
def test_a_division_by_zero_with_no_capped_pass_stays_an_error(tmp_path: Path) -> None:
    path = _program(tmp_path, GENUINE)
    report = diagnose(str(path))
    assert not any(p["capped"] for p in report.phases)
    [finding] = findings_of(report, "target")
    assert finding.severity is Severity.ERROR
    assert finding.message == "the script raised ZeroDivisionError: division by zero"
    assert finding.location == f"{path}:{_division_line(path)}"
    assert report.exit_code is ExitCode.FINDINGS


def _run(type_name: str, *, capped: bool) -> ScriptRun:
    run = ScriptRun("train.py", status=RunStatus.CRASHED)
    run.passes = [PassRecord(0, 0, 0, batches=4, capped=capped, finished=True)]
    run.error = ErrorRecord(type_name, "3", CodeLocation("train.py", 12))
    return run


@pytest.mark.parametrize("type_name", ["KeyError", "IndexError", "StopIteration"])
def test_other_exceptions_a_cap_can_cause_are_warnings_only_after_a_capped_pass(
        type_name: str) -> None:
    assert crash_finding(_run(type_name, capped=True)).severity is Severity.WARNING
    assert crash_finding(_run(type_name, capped=False)).severity is Severity.ERROR


def test_an_exception_no_cap_causes_stays_an_error_after_a_capped_pass() -> None:
    finding = crash_finding(_run("RuntimeError", capped=True))
    assert finding.severity is Severity.ERROR and finding.location == "train.py:12"
    assert finding.message == "the script raised RuntimeError: 3"


def test_a_tensor_index_error_stays_an_error_after_a_capped_pass() -> None:
    # torch's own IndexError is about shapes (a real bug), not about how many batches ran
    run = _run("IndexError", capped=True)
    run.error = ErrorRecord("IndexError", "index 10 is out of bounds for dimension 0 with "
                            "size 10", CodeLocation("train.py", 12))
    assert crash_finding(run).severity is Severity.ERROR
    run.error = ErrorRecord("IndexError", "Dimension out of range (expected to be in range "
                            "of [-1, 0], but got 1)", CodeLocation("train.py", 12))
    assert crash_finding(run).severity is Severity.ERROR
