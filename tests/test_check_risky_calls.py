"""The risky-calls check: ``torch.load`` that may unpickle code, ``model.forward(x)``.

Real script runs: the buggy and fixed example programs, and small programs written to
tmp_path for what must stay quiet (``super().forward``, a module calling its own
forward, torch 2.6+'s weights-only default).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import assert_ran_quiet, line_containing
from torchdoctor.engine.runner import diagnose
from torchdoctor.findings import Finding, Outcome, Report, Severity
from torchdoctor.scriptrun.directcalls import wrap_load
from torchdoctor.scriptrun.observations import LoadRecord
from torchdoctor.scriptrun.patches import RunLink

CHECK = "risky-calls"
BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"


def _mine(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.check == CHECK]



# ---------------------------------------------------------------- example programs


def test_unsafe_load_example_warns_at_the_load_line(
        example_report: Callable[[str], Report]) -> None:
    found = _mine(example_report("risky_calls"))
    assert len(found) == 1
    finding = found[0]
    assert finding.severity is Severity.WARNING
    line = line_containing(BUGS / "risky_calls.py", "torch.load(")
    assert finding.location.endswith(f"risky_calls.py:{line}")
    assert "weights_only=False" in finding.message
    assert "torch.load(path, weights_only=True)" in finding.hint


def test_direct_forward_example_warns_at_the_call(
        example_report: Callable[[str], Report]) -> None:
    found = _mine(example_report("risky_calls_forward"))
    assert len(found) == 1  # one call site, however many batches
    line = line_containing(BUGS / "risky_calls_forward.py", "loss_fn(model.forward(images)")
    assert found[0].location.endswith(f"risky_calls_forward.py:{line}")
    assert found[0].severity is Severity.WARNING
    assert "Classifier.forward(...) is called directly" in found[0].message
    assert "`model(x)`" in found[0].hint


def test_direct_forward_fixed_example_is_quiet(
        example_report: Callable[[str], Report]) -> None:
    report = example_report("risky_calls_forward_fixed")
    assert_ran_quiet(report, CHECK)
    assert report.errors == [] and report.crashed == []


# ---------------------------------------------------------------- programs in tmp_path

PROGRAM = """
    import torch
    from torch import nn

    class Base(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            return self.linear(x)

    class Child(Base):
        def __init__(self):
            super().__init__()
            self.inner = Base()

        def forward(self, x):
            return super().forward(x) + self.inner.forward(x)  # inside a module: fine

        def predict(self, x):
            return self.forward(x)  # a module's own method: its business

    model = Child()
    x = torch.randn(3, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
    {body}
        loss = out.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""


def _run(tmp_path: Path, body: str) -> tuple[Path, Report]:
    path = tmp_path / "train.py"
    inner = textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 4)
    path.write_text(textwrap.dedent(PROGRAM).format(body=inner), encoding="utf-8")
    return path, diagnose(str(path), select=[CHECK])


@pytest.mark.slow
def test_super_forward_and_own_methods_are_quiet(tmp_path: Path) -> None:
    _, report = _run(tmp_path, """
        out = model(x) + model.predict(x)
    """)
    assert_ran_quiet(report, CHECK)


@pytest.mark.slow
def test_direct_forward_from_a_function_is_flagged(tmp_path: Path) -> None:
    path, report = _run(tmp_path, """
        out = model.forward(x)
    """)
    found = _mine(report)
    assert [f.location for f in found] == [f"{path}:{line_containing(path, 'model.forward(x)')}"]
    assert found[0].message.startswith("Child.forward(...) is called directly")


@pytest.mark.slow
def test_weights_only_load_and_this_torch_default_are_quiet(tmp_path: Path) -> None:
    _, report = _run(tmp_path, f"""
        torch.save(model.state_dict(), {str(tmp_path / 'w.pt')!r})
        model.load_state_dict(torch.load({str(tmp_path / 'w.pt')!r}, weights_only=True))
        model.load_state_dict(torch.load({str(tmp_path / 'w.pt')!r}))
        out = model(x)
    """)
    assert_ran_quiet(report, CHECK)


@pytest.mark.slow
def test_load_without_the_argument_warns_where_the_default_unpickles(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's pre-2.6 default
    path, report = _run(tmp_path, f"""
        torch.save(model.state_dict(), {str(tmp_path / 'w.pt')!r})
        model.load_state_dict(torch.load({str(tmp_path / 'w.pt')!r}))
        out = model(x)
    """)
    found = _mine(report)
    assert [f.location for f in found] == [f"{path}:{line_containing(path, 'torch.load(')}"]
    assert "without weights_only=True" in found[0].message


# ---------------------------------------------------------------- the patch


def test_torch_load_is_restored_after_a_run(tmp_path: Path) -> None:
    original = torch.load
    _run(tmp_path, "out = model(x)")
    assert torch.load is original


class _Recorder:
    def __init__(self) -> None:
        self.records: list[LoadRecord] = []
        self.checkpoints: list[tuple[str, Any]] = []

    def unsafe_load(self, record: LoadRecord) -> None:
        self.records.append(record)

    def checkpoint_call(self, kind: str, location: Any) -> None:
        self.checkpoints.append((kind, location))


def test_a_load_wrapper_that_outlives_its_run_records_nothing(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    recorder = _Recorder()
    link: RunLink[Any] = RunLink(recorder)
    load = wrap_load(torch.load, link)
    load(tmp_path / "w.pt", weights_only=False)
    assert len(recorder.records) == 1 and recorder.records[0].explicit
    assert [kind for kind, _ in recorder.checkpoints] == ["load"]  # the checkpoint phase
    link.cut()
    loaded = load(tmp_path / "w.pt", weights_only=False)
    assert len(recorder.records) == 1 and len(recorder.checkpoints) == 1  # inert
    assert torch.equal(loaded["w"], torch.ones(2))


def test_check_outcome_of_the_buggy_example_is_failed(
        example_report: Callable[[str], Report]) -> None:
    result = example_report("risky_calls").result(CHECK)
    assert result is not None and result.outcome is Outcome.FAILED
