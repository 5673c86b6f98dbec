"""The missing-zero-grad check: gradients carried from one optimizer step into the next.

Real script runs only: the gradient-carry detector needs the user's loop to run.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

from tests.helpers import assert_ran_quiet, line_starting
from torchdoctor.checks.missing_zero_grad import MissingZeroGradCheck
from torchdoctor.engine.context import CheckContext, CheckOptions, ModelCandidate
from torchdoctor.engine.runner import diagnose, run_one_check
from torchdoctor.findings import Finding, Outcome, Report, Severity
from torchdoctor.scriptrun.observations import CarriedGradRecord, CodeLocation, ScriptRun

CHECK = "missing-zero-grad"
BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"


def _mine(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.check == CHECK]



# ---------------------------------------------------------------- example programs


def test_bug_program_found_at_the_step_line(example_report: Callable[[str], Report]) -> None:
    found = _mine(example_report("missing_zero_grad"))
    assert len(found) == 1
    finding = found[0]
    assert finding.severity is Severity.ERROR
    step_line = line_starting(BUGS / "missing_zero_grad.py", "optimizer.step()")
    assert finding.location.endswith(f"missing_zero_grad.py:{step_line}")
    assert "optimizer.zero_grad() is never called" in finding.message
    assert "gradients from step 1" in finding.message and "step 2's" in finding.message
    assert "Adam" in finding.message
    assert "optimizer.zero_grad()" in finding.hint


# ---------------------------------------------------------------- loops written to tmp_path

PROGRAM = """
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(256, 20), torch.randint(0, 5, (256,)))
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    critic = nn.Linear(5, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    critic_optimizer = torch.optim.SGD(critic.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()

    if __name__ == "__main__":
        for epoch in range(3):
            for i, (x, y) in enumerate(DataLoader(data, batch_size=16)):
    {body}
"""


def _program(tmp_path: Path, body: str) -> Path:
    """The program above with ``body`` as the inner loop's body."""
    path = tmp_path / "train.py"
    inner = textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 12)
    path.write_text(textwrap.dedent(PROGRAM).format(body=inner), encoding="utf-8")
    return path


def _check(path: Path) -> list[Finding]:
    return _mine(diagnose(str(path), select=[CHECK]))


def test_gradient_accumulation_is_not_flagged(tmp_path: Path) -> None:
    path = _program(tmp_path, """
        loss = loss_fn(model(x), y) / 4
        loss.backward()
        if (i + 1) % 4 == 0:  # 4 micro-batches per step
            optimizer.step()
            optimizer.zero_grad()
    """)
    assert_ran_quiet(diagnose(str(path), select=[CHECK]), CHECK)


def test_no_zero_grad_at_all_is_flagged(tmp_path: Path) -> None:
    path = _program(tmp_path, """
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    """)
    found = _check(path)
    assert len(found) == 1
    assert found[0].location == f"{path}:{line_starting(path, 'optimizer.step()')}"
    assert "never called" in found[0].message


def test_zero_grad_on_the_wrong_optimizer_is_flagged(tmp_path: Path) -> None:
    path = _program(tmp_path, """
        critic_optimizer.zero_grad()  # clears the critic, not the model
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    """)
    found = _check(path)
    assert len(found) == 1
    message = found[0].message
    assert found[0].location == f"{path}:{line_starting(path, 'optimizer.step()')}"
    assert f"zero_grad() at {path}:{line_starting(path, 'critic_optimizer.zero_grad()')}" in message
    assert "clears other parameters" in message
    assert f"not the 4 parameters of Adam at {path}:" in message
    assert "never called" not in message


def test_model_zero_grad_on_the_same_model_is_not_flagged(tmp_path: Path) -> None:
    path = _program(tmp_path, """
        model.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    """)
    assert_ran_quiet(diagnose(str(path), select=[CHECK]), CHECK)


def test_setting_grads_to_none_is_not_flagged(tmp_path: Path) -> None:
    path = _program(tmp_path, """
        for p in model.parameters():
            p.grad = None
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    """)
    assert_ran_quiet(diagnose(str(path), select=[CHECK]), CHECK)


# ---------------------------------------------------------------- by hand


def test_one_finding_per_optimizer_naming_the_second_one() -> None:
    step = CodeLocation("gan.py", 41, "train")
    run = ScriptRun(path="gan.py", carried_grads=[
        CarriedGradRecord(1, "Adam", 1, step, ["D.fc.weight", "D.fc.bias"]),
        CarriedGradRecord(1, "Adam", 2, step, ["D.fc.weight", "D.fc.bias"]),
    ])
    found = MissingZeroGradCheck().run(CheckContext("gan.py", CheckOptions(), run=run))
    assert len(found) == 1
    assert found[0].location == "gan.py:41"
    assert "Adam #2" in found[0].message
    assert "gradients from step 1 (gan.py:41) were added to step 2's" in found[0].message


def test_model_mode_is_skipped() -> None:
    ctx = CheckContext("x.py::Net", CheckOptions(), models=[
        ModelCandidate("Net", "x.py", lambda: None)])  # type: ignore[arg-type,return-value]
    result = run_one_check(MissingZeroGradCheck(), ctx)
    assert result.outcome is Outcome.SKIPPED and "needs script mode" in result.detail
