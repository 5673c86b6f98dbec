"""A bug in torchdoctor's own analysis surfaces (as a ``crashed`` check, or as the
exception), never as a quiet pass: only what the user's code raises is caught.

Each test injects a failure into one of our analysis functions that runs right next to
the user's code (inside the same function that guards the user's forward pass)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.models import image_mlp
from torchdoctor.engine.runner import Diagnosis, diagnose_model
from torchdoctor.errors import UserCodeError, user_code
from torchdoctor.findings import Outcome
from torchdoctor.hooks import localize_nonfinite


class _Raising(nn.Module):
    """The user's model, failing in its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("the user's forward fails")


def _our_bug(*args: object, **kwargs: object) -> None:
    raise RuntimeError("a bug in torchdoctor's own analysis")


def _outcome(check_id: str) -> tuple[Outcome, str]:
    report = diagnose_model(image_mlp(16), select=[check_id])
    result = report.result(check_id)
    assert result is not None
    return result.outcome, result.detail


@pytest.mark.parametrize(("check_id", "target"), [
    ("overfit-one-batch", "torchdoctor.diagnoses.anatomy._sort_parameters"),
    ("loss-function", "torchdoctor.diagnoses.final_layer._functional_on_return"),
])
def test_a_bug_in_a_checks_own_analysis_is_crashed(check_id: str, target: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(target, _our_bug)
    outcome, detail = _outcome(check_id)
    assert outcome is Outcome.CRASHED
    assert "a bug in torchdoctor's own analysis" in detail


def test_the_users_failure_is_still_caught_where_it_is_expected() -> None:
    """The same guard lets the user's own failure through to the check's verdict: a model
    whose forward raises is not a crash of overfit-one-batch."""
    report = diagnose_model(_Raising(), select=["overfit-one-batch"])
    result = report.result("overfit-one-batch")
    assert result is not None and result.outcome is Outcome.SKIPPED


def test_localize_nonfinite_does_not_hide_its_own_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torchdoctor.hooks.localize.summarize", _our_bug)
    with pytest.raises(RuntimeError, match="own analysis"):
        localize_nonfinite(nn.Linear(3, 2), torch.ones(1, 3))


def test_localize_nonfinite_reports_what_the_users_model_raised() -> None:
    report = localize_nonfinite(nn.Linear(3, 2), torch.ones(1, 4))
    assert report.error is not None and report.error.startswith("RuntimeError")


def test_user_code_labels_only_exceptions() -> None:
    with pytest.raises(UserCodeError) as raised, user_code():
        raise ValueError("the user's")
    assert isinstance(raised.value.error, ValueError)
    assert raised.value.__cause__ is raised.value.error
    with pytest.raises(KeyboardInterrupt), user_code():
        raise KeyboardInterrupt


_SCRIPT = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
loader = DataLoader(TensorDataset(torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))),
                    batch_size=16)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for x, y in loader:
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
print("the script finished")
"""


def test_a_bug_in_a_script_mode_recorder_is_crashed_not_the_scripts_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a recorder runs inside the user's forward (a global hook): its exception used to
    # reach the script and be reported as "the script raised ..." (a false accusation)
    from torchdoctor.scriptrun.forwards import ForwardRecorder

    monkeypatch.setattr(ForwardRecorder, "after", _our_bug)
    path = tmp_path / "train.py"
    path.write_text(_SCRIPT)
    monkeypatch.chdir(tmp_path)
    diagnosis = Diagnosis(str(path), select=["missing-zero-grad", "overfit-one-batch"])
    report = diagnosis.report()
    assert "the script finished" in diagnosis.script_result.output
    assert report.result("target") is None and not report.run_findings
    crashed = report.result("missing-zero-grad")
    assert crashed is not None and crashed.outcome is Outcome.CRASHED
    assert "a bug in torchdoctor's own analysis" in crashed.detail
    model_only = report.result("overfit-one-batch")
    assert model_only is not None and model_only.outcome is not Outcome.CRASHED
