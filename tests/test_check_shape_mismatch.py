"""The shape-mismatch check: crashes pinned to the module, and silent loss broadcasts."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import assert_ran_quiet
from tests.models import ImageMLP
from torchdoctor.checks.shape_mismatch import ShapeMismatchCheck
from torchdoctor.diagnoses.shapes import explain_shape_error
from torchdoctor.engine.context import CheckContext, CheckOptions, ModelCandidate, TrainingSetup
from torchdoctor.engine.runner import diagnose, diagnose_model, run_one_check
from torchdoctor.findings import Finding, Outcome, Report, Severity
from torchdoctor.scriptrun.observations import (
    CodeLocation,
    ForwardRecord,
    LossRecord,
    ScriptRun,
    TensorSummary,
    WarningRecord,
)

CHECK = "shape-mismatch"


def _mine(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.check == CHECK]


def _setup(inputs: torch.Tensor, targets: torch.Tensor, loss: type[nn.Module] = nn.CrossEntropyLoss,
           user: bool = False) -> TrainingSetup:
    source = {"batch": "torchdoctor_batch()", "loss": "torchdoctor_loss()"} if user else {}
    return TrainingSetup(lambda: (inputs.clone(), targets.clone()), loss,
                         lambda params: torch.optim.SGD(params, lr=0.1), source=source)


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))


def _model_ctx(model: nn.Module, setup: TrainingSetup, run: ScriptRun | None = None
               ) -> CheckContext:
    return CheckContext("t", CheckOptions(), setup, run,
                        [ModelCandidate.from_instance("Net", "test", model)])


def _summary(*shape: int, dtype: str = "torch.float32") -> TensorSummary:
    return TensorSummary(shape, dtype, "cpu")


# -- the example programs -----------------------------------------------------------------

def test_example_bug_is_pinned_to_fc1(example_report: Callable[[str], Report]) -> None:
    found = _mine(example_report("shape_mismatch"))
    assert len(found) == 1
    finding = found[0]
    assert finding.severity is Severity.ERROR and finding.explains_crash
    assert finding.location.startswith("fc1 (Linear, in_features=784")
    assert "(64, 1, 28, 28)" in finding.message
    assert "flatten" in finding.hint.lower()
    assert "shape_mismatch.py:23" in finding.message  # the user's line that raised


# -- the silent kind: prediction and target broadcast in the loss --------------------------

REGRESSION = """
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    def main():
        torch.manual_seed(0)
        x = torch.randn(256, 8)
        y = x @ torch.randn(8)  # targets (N,)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))  # output (B, 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        loss_fn = nn.MSELoss()
        for inputs, targets in DataLoader(TensorDataset(x, y), batch_size=64):
            optimizer.zero_grad()
            loss = loss_fn(PREDICTION, targets)
            loss.backward()
            optimizer.step()

    if __name__ == "__main__":
        main()
"""


def _regression(tmp_path: Path, prediction: str) -> Report:
    path = tmp_path / "regression.py"
    path.write_text(textwrap.dedent(REGRESSION).replace("PREDICTION", prediction))
    return diagnose(str(path), select=[CHECK])


def test_regression_head_broadcasting_in_mse_is_found(tmp_path: Path) -> None:
    found = _mine(_regression(tmp_path, "model(inputs)"))
    assert len(found) == 1
    assert found[0].severity is Severity.ERROR
    assert "(64, 1)" in found[0].message and "(64,)" in found[0].message
    assert "(64, 64)" in found[0].message
    assert "squeeze(1)" in found[0].hint
    assert found[0].location.endswith("regression.py:15")


def test_regression_head_squeezed_is_quiet(tmp_path: Path) -> None:
    assert_ran_quiet(_regression(tmp_path, "model(inputs).squeeze(1)"), CHECK)


def test_script_loss_records_elementwise_only() -> None:
    where = CodeLocation("train.py", 30)
    run = ScriptRun("train.py", losses=[
        LossRecord(0, "CrossEntropyLoss", _summary(64, 10), _summary(64, dtype="torch.int64"),
                   2.3, 0, where),
        LossRecord(1, "l1_loss", _summary(64), _summary(64, 1), 1.0, 0, where),
        LossRecord(2, "l1_loss", _summary(64), _summary(64, 1), 1.0, 1, where),
    ])
    found = ShapeMismatchCheck().run(CheckContext("train.py", CheckOptions(), run=run))
    assert len(found) == 1  # CrossEntropy's (64, 10) vs (64,) is right; repeats are merged
    assert "l1_loss compares prediction (64,) with target (64, 1)" in found[0].message
    assert "targets.squeeze(1)" in found[0].hint and found[0].location == "train.py:30"


def test_script_broadcast_warning_alone_is_found() -> None:
    text = ("Using a target size (torch.Size([32])) that is different to the input size "
            "(torch.Size([32, 1])). This will likely lead to incorrect results due to "
            "broadcasting. Please ensure they have the same size.")
    run = ScriptRun("train.py", warnings=[
        WarningRecord("UserWarning", text, CodeLocation("train.py", 12))])
    found = ShapeMismatchCheck().run(CheckContext("train.py", CheckOptions(), run=run))
    assert [f.location for f in found] == ["train.py:12"]
    assert "(32, 1)" in found[0].message and "squeeze(1)" in found[0].hint


# -- model mode ---------------------------------------------------------------------------

def test_model_mode_pins_unflattened_input() -> None:
    found = ShapeMismatchCheck().run(_model_ctx(ImageMLP(flatten=False), _setup(*_images())))
    assert len(found) == 1
    assert found[0].location.startswith("Net: fc1 (Linear, in_features=784")
    assert "(16, 1, 28, 28)" in found[0].message
    assert "reference FashionMNIST batch" in found[0].message
    assert "flatten" in found[0].hint.lower()


def test_model_mode_fixed_is_quiet() -> None:
    assert ShapeMismatchCheck().run(_model_ctx(ImageMLP(), _setup(*_images()))) == []


def test_model_mode_output_must_fit_the_loss() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 5))  # 5 classes, labels up to 9
    inputs, _ = _images()
    found = ShapeMismatchCheck().run(_model_ctx(model, _setup(inputs, torch.arange(16) % 10)))
    assert len(found) == 1
    assert "5 class scores" in found[0].message and "out_features=10" in found[0].hint


def test_model_mode_regression_broadcast_with_users_loss() -> None:
    inputs, targets = torch.randn(32, 8), torch.randn(32)
    head = nn.Sequential(nn.Linear(8, 1))
    found = ShapeMismatchCheck().run(_model_ctx(head, _setup(inputs, targets, nn.MSELoss, True)))
    assert len(found) == 1 and "(32, 1)" in found[0].message
    assert found[0].location == "Net: output (32, 1) -> MSELoss"
    squeezed = nn.Sequential(nn.Linear(8, 1), nn.Flatten(0))
    ctx = _model_ctx(squeezed, _setup(inputs, targets, nn.MSELoss, True))
    assert ShapeMismatchCheck().run(ctx) == []


def test_model_mode_defers_to_the_scripts_own_data() -> None:
    # The script ran this 8-feature model on its own data: the reference image batch
    # not fitting it proves nothing.
    run = ScriptRun("train.py", forwards=[ForwardRecord(0, 0, True, True, 0, None)])
    ctx = _model_ctx(nn.Linear(8, 1), _setup(*_images()), run)
    assert ShapeMismatchCheck().run(ctx) == []


def test_skips_without_run_or_model() -> None:
    result = run_one_check(ShapeMismatchCheck(), CheckContext("t", CheckOptions()))
    assert result.outcome is Outcome.SKIPPED


def test_users_model_is_untouched() -> None:
    model = ImageMLP(flatten=False)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = diagnose_model(model, batch=_images(), select=[CHECK], name="Net")
    assert _mine(report) and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# -- translation of messages ----------------------------------------------------------------

@pytest.mark.parametrize(("message", "expected", "hint"), [
    ("Expected target size [64, 10], got [64]", "extra dimension", "squeeze"),
    ("0D or 1D target tensor expected, multi-target not supported", "class indices",
     "view(-1)"),
    ("Target size (torch.Size([64])) must be the same as input size (torch.Size([64, 1]))",
     "(64, 64)", "squeeze(1)"),
    ("Given normalized_shape=[64], expected input with shape [*, 64], but got input of "
     "size[8, 32]", "normalises the last dims (64,)", "normalized_shape=[32]"),
    ("Sizes of tensors must match except in dimension 1. Expected size 8 but got size 4",
     "Sizes of tensors", "print the shapes"),
])
def test_loss_side_and_generic_messages(message: str, expected: str, hint: str) -> None:
    explained = explain_shape_error(message, None, ())
    assert expected in explained[0] and hint in explained[1]


def test_non_shape_errors_are_not_claimed() -> None:
    assert explain_shape_error("Expected all tensors to be on the same device, but found "
                               "at least two devices, cuda:0 and cpu!", None, ()) == ("", "")
    assert explain_shape_error(ValueError("Target 12 is out of bounds."), None, ()) == ("", "")
