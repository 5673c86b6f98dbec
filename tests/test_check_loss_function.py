"""The loss-function check: softmax before CrossEntropyLoss, sigmoid before
BCEWithLogitsLoss, targets of the wrong dtype or range (recorded calls, crashes, and a
model's output in model mode)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import assert_ran_quiet, line_containing
from tests.models import image_mlp
from torchdoctor.checks.loss_function import LossFunctionCheck
from torchdoctor.diagnoses.loss_inputs import crash_problem, loss_input_problems
from torchdoctor.engine.context import CheckContext, CheckOptions, ModelCandidate, TrainingSetup
from torchdoctor.engine.runner import diagnose, diagnose_model
from torchdoctor.findings import TARGET_CHECK_ID, Finding, Report, Severity
from torchdoctor.reference.trainer import reference_optimizer
from torchdoctor.scriptrun.observations import ErrorRecord, TensorSummary

CHECK = "loss-function"
BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"

PROGRAM = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, OUTPUTS))

    def forward(self, x):
        return OUTPUT


def main():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(256, 20), LABELS)
    loader = DataLoader(data, batch_size=32)
    model = Net()
    loss_fn = LOSS
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), TARGET)
            loss.backward()
            optimizer.step()


if __name__ == "__main__":
    main()
"""

BINARY = {"OUTPUTS": "1", "LABELS": "torch.randint(0, 2, (256, 1)).float()",
          "LOSS": "nn.BCEWithLogitsLoss()", "TARGET": "y"}
CLASSES = {"OUTPUTS": "4", "LABELS": "torch.randint(0, 4, (256,)).float()",
           "LOSS": "nn.CrossEntropyLoss()", "OUTPUT": "self.layers(x)"}


def _program(tmp_path: Path, **markers: str) -> Path:
    source = textwrap.dedent(PROGRAM)
    for marker, code in markers.items():
        source = source.replace(marker, code)
    path = tmp_path / "train.py"
    path.write_text(source, encoding="utf-8")
    return path



def _mine(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.check == CHECK]


# ---------------------------------------------------------------- example programs


def test_bug_program_softmax_before_cross_entropy(example_report: Callable[[str], Report]) -> None:
    found = _mine(example_report("loss_function"))
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "softmax" in found[0].message and "CrossEntropyLoss" in found[0].message
    line = line_containing(BUGS / "loss_function.py", "loss = loss_fn(model(images), labels)")
    assert found[0].location.endswith(f"loss_function.py:{line}")
    assert "logits" in found[0].hint


# ---------------------------------------------------------------- script mode, real runs


def test_sigmoid_before_bce_with_logits_is_found(tmp_path: Path) -> None:
    path = _program(tmp_path, **BINARY, OUTPUT="torch.sigmoid(self.layers(x))")
    found = _mine(diagnose(str(path), select=[CHECK]))
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "sigmoid" in found[0].message and "BCEWithLogitsLoss" in found[0].message
    assert found[0].location.endswith(f"train.py:{line_containing(path, 'loss = loss_fn')}")


def test_logits_to_bce_with_logits_are_quiet(tmp_path: Path) -> None:
    path = _program(tmp_path, **BINARY, OUTPUT="self.layers(x)")
    assert_ran_quiet(diagnose(str(path), select=[CHECK]), CHECK)


def test_float_class_targets_crash_is_explained(tmp_path: Path) -> None:
    path = _program(tmp_path, **CLASSES, TARGET="y")
    report = diagnose(str(path), select=[CHECK])
    found = _mine(report)
    assert [f.severity for f in found] == [Severity.ERROR]
    assert found[0].explains_crash and "labels.long()" in found[0].hint
    assert found[0].location.endswith(f"train.py:{line_containing(path, 'loss = loss_fn')}")
    assert not [f for f in report.findings if f.check == TARGET_CHECK_ID]


def test_long_class_targets_are_quiet(tmp_path: Path) -> None:
    path = _program(tmp_path, **CLASSES, TARGET="y.long()")
    report = diagnose(str(path), select=[CHECK])
    assert_ran_quiet(report, CHECK)
    assert report.errors == []


def test_nll_loss_sum_after_log_softmax_is_quiet(tmp_path: Path) -> None:
    """pytorch/examples MNIST: log_softmax output, then F.nll_loss(reduction="sum") in the
    evaluation loop. The later loss calls are recorded shape-only (no statistics); the
    NLLLoss rule used to format their missing min/max and crash the check."""
    path = _program(tmp_path, OUTPUTS="4", LABELS="torch.randint(0, 4, (256,))",
                    LOSS="nn.NLLLoss(reduction='sum')", TARGET="y",
                    OUTPUT="torch.log_softmax(self.layers(x), dim=1)")
    assert_ran_quiet(diagnose(str(path), select=[CHECK]), CHECK)


def test_nll_rule_does_not_judge_a_shape_only_summary() -> None:
    shape_only = TensorSummary((64, 10), "torch.float32", "cpu")  # no statistics
    labels = TensorSummary((64,), "torch.int64", "cpu", min=0.0, max=9.0)
    assert loss_input_problems("nll_loss", shape_only, labels, {"reduction": "sum"}) == []


# ---------------------------------------------------------------- model mode


def _classifier(*tail: nn.Module) -> nn.Module:
    return image_mlp(32, *tail)


def test_model_ending_in_softmax_is_found() -> None:
    model = _classifier(nn.Softmax(dim=1))
    found = _mine(diagnose_model(model, select=[CHECK]))
    assert [f.severity for f in found] == [Severity.ERROR]
    assert found[0].location == "model: 4 (Softmax, dim=1)"
    assert "assuming the reference CrossEntropyLoss" in found[0].message


def test_model_returning_logits_is_quiet() -> None:
    assert_ran_quiet(diagnose_model(_classifier(), select=[CHECK]), CHECK)


def test_log_softmax_model_with_assumed_loss_is_quiet() -> None:
    # right for NLLLoss: without the user's loss the check must not guess
    assert_ran_quiet(diagnose_model(_classifier(nn.LogSoftmax(dim=1)), select=[CHECK]), CHECK)


def _own_loss_context(model: nn.Module, loss: nn.Module) -> CheckContext:
    batch = (torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    setup = TrainingSetup(lambda: batch, lambda: loss, reference_optimizer,
                          source={"loss": "torchdoctor_loss()"})
    return CheckContext("t", CheckOptions(), setup, None,
                        [ModelCandidate.from_instance("Net", "test", model)])


def test_users_own_loss_is_judged_fully() -> None:
    found = LossFunctionCheck().run(_own_loss_context(_classifier(nn.Softmax(dim=1)),
                                                      nn.NLLLoss()))
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "NLLLoss got probabilities" in found[0].message
    redundant = LossFunctionCheck().run(_own_loss_context(_classifier(nn.LogSoftmax(dim=1)),
                                                          nn.CrossEntropyLoss()))
    assert [f.severity for f in redundant] == [Severity.WARNING]
    fine = LossFunctionCheck().run(_own_loss_context(_classifier(nn.LogSoftmax(dim=1)),
                                                     nn.NLLLoss()))
    assert fine == []


def test_model_mode_leaves_the_model_alone() -> None:
    model = _classifier(nn.Softmax(dim=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    diagnose_model(model, select=[CHECK])
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------- crashes


@pytest.mark.parametrize(("message", "kind"), [
    ("expected target dtype to be Long or Byte, but got Float", "target-dtype"),
    ("expected scalar type Long but found Float", "target-dtype"),
    ("Target 10 is out of bounds.", "target-range"),
    ("0D or 1D target tensor expected, multi-target not supported", "target-shape"),
    ("all elements of input should be between 0 and 1", "not-probabilities"),
])
def test_loss_crashes_are_recognised(message: str, kind: str) -> None:
    problem = crash_problem(ErrorRecord("RuntimeError", message, None))
    assert problem is not None and problem.kind == kind


def test_unrelated_crashes_are_not_claimed() -> None:
    assert crash_problem(ErrorRecord("RuntimeError", "mat1 and mat2 shapes cannot be "
                                     "multiplied (64x784 and 100x10)", None)) is None
    # the same words from an in-place op on an integer tensor, not from a loss
    assert crash_problem(ErrorRecord(
        "RuntimeError", "result type Float can't be cast to the desired output type Long",
        None, traceback_text="x += 0.5")) is None
    assert crash_problem(ErrorRecord(
        "RuntimeError", "result type Float can't be cast to the desired output type Long",
        None, traceback_text="F.binary_cross_entropy_with_logits(")) is not None
