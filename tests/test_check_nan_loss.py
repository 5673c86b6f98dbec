"""The nan-loss check: where a NaN/inf started, and the likely cause from a small table."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import assert_ran_quiet, line_starting
from torchdoctor.check import SkipCheck
from torchdoctor.checks.nan_loss import NanLossCheck
from torchdoctor.diagnoses.nonfinite import Evidence, classify, loss_rose
from torchdoctor.engine.context import CheckContext, CheckOptions, ModelCandidate, TrainingSetup
from torchdoctor.engine.runner import diagnose, diagnose_model, run_one_check
from torchdoctor.findings import Finding, Outcome, Report, Severity
from torchdoctor.scriptrun.observations import (
    CodeLocation,
    ForwardRecord,
    LossRecord,
    NonFiniteRecord,
    ScriptRun,
    TensorSummary,
)

CHECK = "nan-loss"
BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"


def _mine(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.check == CHECK]



# ---------------------------------------------------------------- example programs


def test_bug_program_found_with_step_module_and_cause(
        example_report: Callable[[str], Report]) -> None:
    found = _mine(example_report("nan_loss"))
    assert len(found) == 1
    finding = found[0]
    assert finding.severity is Severity.ERROR
    assert "after" in finding.message and "optimizer step" in finding.message
    # where it started: a Linear's output overflows, or (logits huge but finite) the loss
    assert ("first module with a non-finite output: layers.4 (Linear, in_features=256"
            in finding.message or "produced by the loss function (CrossEntropyLoss)"
            in finding.message)
    assert "learning rate too high" in finding.message
    assert "lr=1000" in finding.message
    backward_line = line_starting(BUGS / "nan_loss.py", "loss.backward()")
    assert finding.location.endswith(f"nan_loss.py:{backward_line}")
    assert "clip_grad_norm_" in finding.hint


# ---------------------------------------------------------------- a second cause: log(0)

LOG_OF_SOFTMAX = """
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(20, 32)
            self.fc2 = nn.Linear(32, 5)

        def forward(self, x):
            logits = self.fc2(torch.relu(self.fc1(x)))
            return {output}


    if __name__ == "__main__":
        torch.manual_seed(0)
        data = TensorDataset(torch.randn(256, 20) * 3, torch.randint(0, 5, (256,)))
        model = Net()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for x, y in DataLoader(data, batch_size=64, shuffle=True):
            optimizer.zero_grad()
            loss = nn.functional.nll_loss(model(x), y)
            loss.backward()
            optimizer.step()
"""


def _log_program(tmp_path: Path, output: str) -> Path:
    path = tmp_path / "log_softmax.py"
    path.write_text(textwrap.dedent(LOG_OF_SOFTMAX.format(output=output)), encoding="utf-8")
    return path


def test_log_of_softmax_program_is_log_of_zero(tmp_path: Path) -> None:
    # a sharp temperature: softmax probabilities underflow to 0, torch.log gives -inf
    path = _log_program(tmp_path, "torch.log(torch.softmax(logits / 0.01, dim=1))")
    found = _mine(diagnose(str(path), select=[CHECK]))
    assert len(found) == 1
    message = found[0].message
    assert "at the very first step" in message
    assert "Net.forward itself" in message  # not fc1/fc2: the torch.log in forward()
    assert "log of zero / division by zero" in message
    assert "log_softmax" in found[0].hint
    assert found[0].location.endswith(f"log_softmax.py:{line_starting(path, 'loss.backward()')}")


def test_log_softmax_program_is_quiet(tmp_path: Path) -> None:
    path = _log_program(tmp_path, "torch.log_softmax(logits / 0.01, dim=1)")
    assert_ran_quiet(diagnose(str(path), select=[CHECK]), CHECK)


# ---------------------------------------------------------------- the cause table


@pytest.mark.parametrize(("evidence", "cause"), [
    (Evidence(0, "activation", inputs_finite=False), "data"),
    (Evidence(3, "activation", loss_history=(2.3, 9.0, 80.0), inputs_finite=False), "data"),
    (Evidence(0, "loss", dtype="torch.float16", output_finite=True), "overflow"),
    (Evidence(5, "activation", loss_history=(2.3, 40.0, 1e9)), "divergence"),
    (Evidence(5, "gradient", loss_history=(2.3, 2.2, 2.1), lr=10.0,
              optimizer_type="SGD"), "divergence"),
    (Evidence(2, "parameter", loss_history=(2.3, 2.2)), "divergence"),
    (Evidence(0, "activation"), "log-or-div"),
    (Evidence(7, "loss", loss_history=(0.9, 0.7, 0.5), output_finite=True), "log-or-div"),
    (Evidence(7, "gradient", loss_history=(0.9, 0.7, 0.5), lr=1e-3, optimizer_type="Adam",
              detail="Function 'DivBackward0' returned nan values in its 1th output."),
     "log-or-div"),
    (Evidence(7, "activation", loss_history=(0.9, 0.7, 0.5), lr=1e-3,
              optimizer_type="Adam"), "unknown"),
])
def test_classify_table(evidence: Evidence, cause: str) -> None:
    found, because = classify(evidence)
    assert found.name == cause
    assert because  # every cause quotes its evidence


def test_large_lr_depends_on_optimizer() -> None:
    history = (2.3, 2.2, 2.1)
    sgd = Evidence(4, "gradient", loss_history=history, lr=0.5, optimizer_type="SGD")
    adam = Evidence(4, "gradient", loss_history=history, lr=0.5, optimizer_type="Adam")
    assert classify(sgd)[0].name == "unknown"
    assert classify(adam)[0].name == "divergence"
    assert "lr=0.5, large for Adam" in classify(adam)[1]


def test_loss_rose() -> None:
    assert loss_rose((2.3, 3851.0, 3.9e11))
    assert loss_rose((2.3, 1.0, 1.1, 5.0))
    assert not loss_rose((2.3, 1.9, 1.5, 1.2))
    assert not loss_rose((2.3,))


# ---------------------------------------------------------------- script mode, by hand


def _summary(finite: bool = True, dtype: str = "torch.float32") -> TensorSummary:
    return TensorSummary((64, 5), dtype, "cpu", finite=finite)


def test_script_loss_only_names_the_loss_function() -> None:
    # a custom NLL on log-probabilities that holds a log(0): the output is finite
    where = CodeLocation("train.py", 30, "main")
    run = ScriptRun(
        path="train.py",
        forwards=[ForwardRecord(0, 0, True, True, 3, where, (_summary(),), _summary())],
        losses=[LossRecord(0, "nll_loss", _summary(), None, None, 3, where)],
        nonfinite=[NonFiniteRecord(3, "loss", "", where, loss_history=[0.9, 0.7, 0.6])],
    )
    found = NanLossCheck().run(CheckContext("train.py", CheckOptions(), run=run))
    assert len(found) == 1
    assert found[0].location == "train.py:30"
    assert "the loss function (nll_loss)" in found[0].message
    assert "log of zero" in found[0].message
    assert "the model output was finite" in found[0].message


def test_script_without_nonfinite_records_is_quiet() -> None:
    ctx = CheckContext("train.py", CheckOptions(), run=ScriptRun(path="train.py"))
    assert NanLossCheck().run(ctx) == []


def test_nothing_to_look_at_is_skipped() -> None:
    result = run_one_check(NanLossCheck(), CheckContext("x", CheckOptions()))
    assert result.outcome is Outcome.SKIPPED


# ---------------------------------------------------------------- model mode


class LogSoftmaxNet(nn.Module):
    """torch.log(softmax(x / T)) with a tiny T: probabilities underflow to 0."""

    def __init__(self, stable: bool = False) -> None:
        super().__init__()
        self.stable = stable
        self.fc = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x) / 0.01
        if self.stable:
            return torch.log_softmax(logits, dim=1)
        return torch.log(torch.softmax(logits, dim=1))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))


def _setup(optimizer: Callable[..., torch.optim.Optimizer], loss: Callable[[], nn.Module],
           scale: float = 3.0, nan_inputs: bool = False,
           dtype: torch.dtype = torch.float32) -> TrainingSetup:
    inputs, targets = _batch(scale, nan_inputs, dtype)
    return TrainingSetup(make_batch=lambda: (inputs.clone(), targets.clone()),
                         make_loss=loss, make_optimizer=optimizer)


def _batch(scale: float = 3.0, nan_inputs: bool = False,
           dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 20, generator=generator) * scale
    if nan_inputs:
        inputs[3, 7] = float("nan")
    return inputs.to(dtype), torch.randint(0, 5, (64,), generator=generator)


def _model_ctx(model: nn.Module, setup: TrainingSetup) -> CheckContext:
    candidate = ModelCandidate.from_instance("Net", "train.py", model)
    return CheckContext("train.py::Net", CheckOptions(), setup=setup, models=[candidate])


def _adam(params: object) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)  # type: ignore[arg-type]


def test_model_mode_log_of_zero() -> None:
    found = NanLossCheck().run(_model_ctx(LogSoftmaxNet(), _setup(_adam, nn.NLLLoss)))
    assert len(found) == 1
    assert found[0].message.startswith("Net: ")
    assert "at the very first step" in found[0].message
    assert "LogSoftmaxNet.forward itself" in found[0].message
    assert "log of zero / division by zero" in found[0].message
    assert "LogBackward0" in found[0].message  # anomaly mode, in the single replay
    assert not torch.is_anomaly_enabled()


def test_model_mode_log_softmax_is_quiet() -> None:
    ctx = _model_ctx(LogSoftmaxNet(stable=True), _setup(_adam, nn.NLLLoss))
    assert NanLossCheck().run(ctx) == []


def test_model_mode_divergence_names_step_and_layer() -> None:
    # BatchNorm and Dropout: the replay restores the step's buffers and RNG state
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(64, 5))
    setup = _setup(lambda p: torch.optim.SGD(p, lr=1e4), nn.CrossEntropyLoss)
    found = NanLossCheck().run(_model_ctx(model, setup))
    assert len(found) == 1
    message = found[0].message
    assert "after" in message and "optimizer step" in message
    assert "4 (Linear, in_features=64, out_features=5" in message
    assert "learning rate too high" in message and "lr=10000, large for SGD" in message
    assert found[0].location.startswith("Net: ")


def test_model_mode_sane_lr_is_quiet() -> None:
    setup = _setup(lambda p: torch.optim.SGD(p, lr=1e-2), nn.CrossEntropyLoss)
    assert NanLossCheck().run(_model_ctx(_mlp(), setup)) == []


def test_model_mode_nan_inputs_blame_the_data() -> None:
    setup = _setup(_adam, nn.CrossEntropyLoss, nan_inputs=True)
    found = NanLossCheck().run(_model_ctx(_mlp(), setup))
    assert len(found) == 1
    assert "bad input data" in found[0].message
    assert "check_batch" in found[0].hint


def test_model_mode_float16_overflow() -> None:
    setup = _setup(lambda p: torch.optim.SGD(p, lr=1e-2), nn.CrossEntropyLoss, scale=1e4,
                   dtype=torch.float16)
    found = NanLossCheck().run(_model_ctx(_mlp().half(), setup))
    assert len(found) == 1
    assert "float16 overflow" in found[0].message
    assert "GradScaler" in found[0].hint


def test_model_the_setup_cannot_train_is_skipped_not_crashed() -> None:
    wrong_width = nn.Sequential(nn.Linear(7, 5))  # the batch has 20 features
    ctx = _model_ctx(wrong_width, _setup(_adam, nn.CrossEntropyLoss))
    with pytest.raises(SkipCheck, match="could not train a copy"):
        NanLossCheck().run(ctx)
    ctx.run = ScriptRun(path="train.py")  # with a clean script run: passed, not skipped
    assert NanLossCheck().run(ctx) == []


def test_diagnose_model_leaves_the_users_model_untouched() -> None:
    model = LogSoftmaxNet()
    model.eval()
    model.fc.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = diagnose_model(model, batch=_batch(), loss_fn=nn.NLLLoss(), select=[CHECK],
                            optimizer_factory=_adam)
    assert len(_mine(report)) == 1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training is False
    assert model.fc.bias.requires_grad is False and model.fc.weight.requires_grad is True
    assert all(p.grad is None for p in model.parameters())
    assert not torch.is_anomaly_enabled()
