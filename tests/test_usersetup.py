"""The script's own training setup: captured in script mode (optimizer and param groups,
loss, scheduler, clipping, one batch), used by model mode (overfit-one-batch trains
copies with it), named in the report, and left out with a reason where it cannot be
replayed (two optimizers, a loss written by hand)."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import assert_ran_quiet, findings_of
from tests.models import image_mlp
from torchdoctor.diagnoses.overfit import Fit
from torchdoctor.engine.context import CheckOptions
from torchdoctor.engine.runner import diagnose
from torchdoctor.engine.usersetup import build_optimizer
from torchdoctor.findings import Report, Severity
from torchdoctor.report import render_json, render_text
from torchdoctor.scriptrun.script import run_script
from torchdoctor.scriptrun.setupdata import OptimizerSetup, ParamGroupSetup

CHECK = "overfit-one-batch"
BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"

#: a small classifier trained on fixed random data; {optimizer}, {loss}, {extra} vary
PROGRAM = """\
import torch
from torch import nn
import torch.nn.functional as F

torch.manual_seed(0)
X = torch.randn(256, 20)
y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
optimizer = {optimizer}
{extra}
def step(xb, yb):
    optimizer.zero_grad()
    out = model(xb)
    loss = {loss}
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()

for epoch in range(3):
    for i in range(0, 256, 32):
        step(X[i:i + 32], y[i:i + 32])
    {epoch_end}
"""


def _write(tmp_path: Path, name: str = "train.py", *,
           optimizer: str = "torch.optim.Adam(model.parameters(), lr=1e-2)",
           loss: str = "F.cross_entropy(out, yb)", extra: str = "",
           epoch_end: str = "pass") -> Path:
    path = tmp_path / name
    path.write_text(PROGRAM.format(optimizer=optimizer, loss=loss, extra=extra,
                                   epoch_end=epoch_end), encoding="utf-8")
    return path


# ---------------------------------------------------------------- capture


def test_capture_keeps_groups_by_name_initial_lr_scheduler_clipping_and_one_batch(
        tmp_path: Path) -> None:
    path = _write(
        tmp_path, optimizer="torch.optim.SGD([{'params': model[0].parameters()}, "
        "{'params': model[2].parameters(), 'weight_decay': 1e-4}], lr=0.05, momentum=0.9)",
        loss="nn.CrossEntropyLoss(label_smoothing=0.1)(out, yb)",
        extra="scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.1 * e)",
        epoch_end="scheduler.step()")
    run = run_script(path, CheckOptions()).run
    assert len(run.setups) == 1
    setup = run.setups[0]
    assert setup.problems == []
    (optimizer,) = setup.optimizers
    assert optimizer.type_name == "SGD" and optimizer.location.endswith("train.py:9")
    assert [g.params for g in optimizer.groups] == [["0.weight", "0.bias"],
                                                     ["2.weight", "2.bias"]]
    # the warmup scheduler set lr to 0 at once: the initial lr is what is replayed
    assert [g.options["lr"] for g in optimizer.groups] == [0.05, 0.05]
    assert optimizer.scheduled
    assert optimizer.groups[1].options["weight_decay"] == 1e-4
    assert setup.schedulers == ["LambdaLR"]
    assert setup.clipping == [("norm", 5.0)]
    assert setup.loss is not None and setup.loss.name == "CrossEntropyLoss"
    assert isinstance(setup.loss.module, nn.CrossEntropyLoss)
    assert setup.loss.module.label_smoothing == 0.1
    assert setup.inputs.shape == (32, 20) and setup.targets.shape == (32,)
    assert setup.batch_size == 32 and not setup.inputs.requires_grad
    assert setup.describe() == (
        "SGD(lr=0.05, momentum=0.9, +1 param group(s)), "
        "CrossEntropyLoss(label_smoothing=0.1), a batch of 32 from the script, "
        "LambdaLR (initial lr used, no schedule), clip_grad_norm_(5)")


def test_functional_loss_options_are_kept(tmp_path: Path) -> None:
    path = _write(tmp_path, loss="F.nll_loss(F.log_softmax(out, dim=1), yb, reduction='sum')")
    (setup,) = run_script(path, CheckOptions()).run.setups
    # the loss does not take the model's output itself: not replayed, and said why
    assert setup.problems and "by hand" in setup.problems[0]
    path = _write(tmp_path, "direct.py", loss="F.cross_entropy(out, yb, label_smoothing=0.05)")
    (setup,) = run_script(path, CheckOptions()).run.setups
    assert setup.problems == []
    assert setup.loss is not None and setup.loss.functional
    assert setup.loss.options == {"label_smoothing": 0.05}


def test_the_optimizer_is_rebuilt_on_a_copy_by_parameter_name() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    spec = OptimizerSetup("SGD", "torch.optim.sgd", {"lr": 0.1, "momentum": 0.0},
                          [ParamGroupSetup({"lr": 0.1, "momentum": 0.9}, ["0.weight", "0.bias"]),
                           ParamGroupSetup({"lr": 0.01, "weight_decay": 0.5}, ["2.weight"])])
    optimizer = build_optimizer(spec, model, [("value", 0.5)])
    groups = optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.1, 0.01]
    assert groups[0]["params"][0] is model[0].weight
    assert groups[1]["params"] == [model[2].weight]  # 2.bias was in no group: stays out
    assert groups[1]["weight_decay"] == 0.5 and groups[0]["momentum"] == 0.9
    model(torch.randn(3, 4)).pow(2).sum().mul(100).backward()
    optimizer.step()  # the script's clipping runs before each step of the copy
    assert float(model[0].weight.grad.abs().max()) <= 0.5


# ---------------------------------------------------------------- judging with it


def test_stuck_is_no_decrease_not_slow_progress() -> None:
    flat = Fit([2.30 + 0.01 * (i % 3) for i in range(300)], 2.3, 1.0, False, 0.115)
    slow = Fit([2.30 - 0.001 * i for i in range(300)], 2.0, 1.0, False, 0.115)
    assert flat.stuck and not slow.stuck
    assert not Fit([2.3] * 10, 2.3, 0.1, False, 0.115).stuck  # too short to say
    assert not Fit([2.3] * 40, 2.3, 1.0, True, 0.115).stuck  # cut by the time budget
    # flat says what the steps showed even when the budget cut them (super_resolution
    # with Adam lr=1e-9: 0.508 -> 0.508 in 179 steps was worded "the loss decreases")
    assert Fit([0.508] * 179, 0.508, 1.0, True, 0.05).flat
    assert not Fit([2.30 - 0.01 * i for i in range(40)], 2.0, 1.0, True, 0.115).flat


@pytest.mark.slow
def test_healthy_setup_with_warmup_and_label_smoothing_is_not_accused(tmp_path: Path) -> None:
    path = _write(
        tmp_path, optimizer="torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)",
        loss="nn.CrossEntropyLoss(label_smoothing=0.2)(out, yb)",
        extra="scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1e-6, 1.0, 10)",
        epoch_end="scheduler.step()")
    report = diagnose(str(path))
    assert_ran_quiet_or_info(report)
    assert report.setups["model"].startswith("your setup: SGD(lr=0.1, momentum=0.9)")


def assert_ran_quiet_or_info(report: Report) -> None:
    """overfit-one-batch passed, with at most an info (a partial fit is no accusation)."""
    found = findings_of(report, CHECK)
    assert all(f.severity is Severity.INFO for f in found), found
    assert report.result(CHECK) is not None and report.result(CHECK).outcome.value == "passed"
    assert report.errors == []


@pytest.mark.slow
def test_a_loss_that_never_moves_is_at_chance_level(tmp_path: Path) -> None:
    path = _write(tmp_path, optimizer="torch.optim.SGD(model.parameters(), lr=1e-4)")
    report = diagnose(str(path))
    found = findings_of(report, CHECK)
    assert [f.severity for f in found] == [Severity.ERROR], found
    assert "does not learn with your setup (SGD(lr=0.0001), F.cross_entropy)" in found[0].message
    assert "chance level" in found[0].message and "ln(3)" in found[0].message
    assert found[0].location.endswith("train.py:9")
    assert "learning rate" in found[0].hint


@pytest.mark.slow
def test_two_optimizers_keep_the_reference_and_say_why(tmp_path: Path) -> None:
    path = _write(tmp_path, extra="other = torch.optim.SGD(model[2].parameters(), lr=0.1)\n"
                                  "other.zero_grad()")
    report = diagnose(str(path))
    assert "model" not in report.setups  # a 20-feature model cannot take the reference
    result = report.result(CHECK)
    assert result is not None and "2 optimizers" in result.detail


def test_lr_example_names_the_setup_and_the_optimizer_line(
        example_report: Callable[[str], Report]) -> None:
    report = example_report("overfit_one_batch_lr")
    found = findings_of(report, CHECK)
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "the learning rate 1e-09 is far too small" in found[0].message
    assert "your setup: SGD(lr=1e-09, momentum=0.9), CrossEntropyLoss" in found[0].message
    lines = (BUGS / "overfit_one_batch_lr.py").read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "# BUG: 1e-9" in text)
    assert found[0].location.endswith(f"overfit_one_batch_lr.py:{line}")
    assert report.setups == {"Classifier": "your setup: SGD(lr=1e-09, momentum=0.9), "
                                           "CrossEntropyLoss, a batch of 64 from the script"}
    payload = json.loads(render_json([report]))
    assert payload["setups"] == report.setups
    assert "setup: your setup: SGD(lr=1e-09" in render_text(report, width=200)


def test_lr_example_fixed_is_quiet(example_report: Callable[[str], Report]) -> None:
    report = example_report("overfit_one_batch_lr_fixed")
    assert_ran_quiet(report, CHECK)
    assert report.setups["Classifier"].startswith("your setup: SGD(lr=0.01, momentum=0.9)")


def test_step_without_parentheses_is_reported_once(
        example_report: Callable[[str], Report]) -> None:
    """No step is ever applied: params-not-updating says so; the copies trained with the
    script's setup step (our loop calls step()), so overfit-one-batch does not repeat it."""
    report = example_report("params_not_updating_no_step")
    assert [f.check for f in report.errors] == ["params-not-updating"]
    assert report.setups["Classifier"].startswith("your setup: Adam(lr=0.001)")


def test_the_reference_is_named_when_no_script_ran() -> None:
    from torchdoctor.engine.runner import diagnose_model

    report = diagnose_model(image_mlp(32), select=[CHECK])
    assert report.setups == {"model": "reference setup: Adam(lr=0.001), CrossEntropyLoss, "
                                      f"{report.data}"}


def test_a_learning_rate_the_script_diverged_with_is_reported_once(
        example_report: Callable[[str], Report]) -> None:
    """SGD lr=1000 makes the script's loss NaN (nan-loss says so); the copies trained
    with that setup diverge too, which is the same cause: overfit-one-batch stays quiet."""
    report = example_report("nan_loss")
    assert report.setups["Classifier"].startswith("your setup: SGD(lr=1000, momentum=0.9)")
    assert [f.check for f in report.errors] == ["nan-loss"]
    assert_ran_quiet(report, CHECK)


def test_a_head_outside_the_optimizer_is_reported_once(
        example_report: Callable[[str], Report]) -> None:
    """The optimizer was built before the head was replaced: the copies get the same
    param groups by name (the new head in none), and params-not-updating, which saw the
    script's own gradients, is the one finding."""
    report = example_report("params_not_updating")
    assert [f.check for f in report.errors] == ["params-not-updating"]
    assert_ran_quiet(report, CHECK)
    assert report.setups["Classifier"].startswith("your setup: Adam(lr=0.001)")


def test_a_squeezed_output_of_a_two_input_model_is_replayed(tmp_path: Path) -> None:
    path = tmp_path / "pairs.py"
    path.write_text(textwrap.dedent("""\
        import torch
        from torch import nn

        class Pair(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Linear(8, 16)
                self.head = nn.Linear(32, 1)

            def forward(self, a, b):
                return torch.sigmoid(self.head(torch.cat([self.body(a), self.body(b)], 1)))

        torch.manual_seed(0)
        model = Pair()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        criterion = nn.BCELoss()
        for _ in range(5):
            a, b = torch.randn(16, 8), torch.randn(16, 8)
            target = (a.sum(1) > b.sum(1)).float()
            optimizer.zero_grad()
            loss = criterion(model(a, b).squeeze(), target)
            loss.backward()
            optimizer.step()
        """), encoding="utf-8")
    (setup,) = run_script(path, CheckOptions()).run.setups
    assert setup.problems == []
    assert isinstance(setup.inputs, tuple) and len(setup.inputs) == 2
    assert setup.loss is not None and setup.loss.reshape == (16,)
    report = diagnose(str(path))
    assert report.setups["model"] == ("your setup: Adam(lr=0.01), BCELoss, a batch of 16 "
                                      "from the script")
    assert report.errors == []
    assert report.result(CHECK) is not None
    assert report.result(CHECK).outcome.value == "passed"


def test_no_patch_of_the_capture_outlives_the_run(tmp_path: Path) -> None:
    from torch.optim import lr_scheduler

    owners = [(torch.optim.Optimizer, "__init__"), (lr_scheduler.LRScheduler, "__init__"),
              (lr_scheduler.ReduceLROnPlateau, "__init__"), (torch.amp.GradScaler, "scale"),
              (nn.utils, "clip_grad_norm_"), (nn.utils, "clip_grad_value_")]
    before = [vars(owner)[name] for owner, name in owners]
    path = _write(tmp_path, extra="scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)",
                  epoch_end="scheduler.step()")
    run = run_script(path, CheckOptions()).run
    assert run.setups and run.setups[0].schedulers == ["StepLR"]
    assert [vars(owner)[name] for owner, name in owners] == before


def test_weight_decay_example_says_the_decay_zeroes_the_weights(
        example_report: Callable[[str], Report]) -> None:
    report = example_report("overfit_one_batch_weight_decay")
    found = findings_of(report, CHECK)
    assert [f.severity for f in found] == [Severity.ERROR]
    assert found[0].message.startswith(
        "Classifier: weight_decay=1000 with lr=0.001 pulls the weights 100% of the way to "
        "zero each step: loss ")
    # the loss stays at chance, ln(10) = 2.30 (2.29 on the synthetic stand-in, 2.3 on the
    # real subset: the printed figure depends on the data)
    first, last = re.search(r"loss ([\d.]+) -> ([\d.]+)", found[0].message).groups()
    assert abs(float(first) - 2.30) < 0.05 and abs(float(last) - 2.30) < 0.05
    assert "(your setup: AdamW(lr=0.001, weight_decay=1000), CrossEntropyLoss)" in \
        found[0].message
    lines = (BUGS / "overfit_one_batch_weight_decay.py").read_text(encoding="utf-8")
    line = next(i for i, text in enumerate(lines.splitlines(), 1) if "# BUG" in text)
    assert found[0].location.endswith(f"overfit_one_batch_weight_decay.py:{line}")
    assert "weight_decay of 1e-4 to 1e-2" in found[0].hint
    assert [f.check for f in report.errors] == [CHECK]


def test_weight_decay_example_fixed_is_quiet(example_report: Callable[[str], Report]) -> None:
    assert_ran_quiet(example_report("overfit_one_batch_weight_decay_fixed"), CHECK)


def test_inputs_other_than_tensors_are_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "dict_input.py"
    path.write_text(textwrap.dedent("""\
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)

            def forward(self, batch):
                return self.fc(batch["x"])

        model = Net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            batch = {"x": torch.randn(8, 4)}
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(batch), torch.zeros(8, dtype=torch.long)).backward()
            optimizer.step()
        """), encoding="utf-8")
    (setup,) = run_script(path, CheckOptions()).run.setups
    assert setup.problems == ["it takes inputs other than tensors (a dict, an object)"]
    assert setup.inputs is None and setup.targets is None


def test_the_words_for_a_regression_and_for_a_classifier_at_chance() -> None:
    from torchdoctor.diagnoses.overfit import does_not_learn, heavy_decay

    flat = Fit([0.84] * 300, 0.84, 1.0, False, 0.05)
    assert does_not_learn("net", flat, "SGD(lr=1e-06), MSELoss", None, 32) == (
        "net does not learn with your setup (SGD(lr=1e-06), MSELoss): the loss does not "
        "decrease (0.84 -> 0.84) over 300 steps on one batch of 32")
    chance = Fit([2.303] * 300, 2.303, 1.0, False, 0.115)
    assert "stays at chance level (2.3; ln(10) = 2.3)" in does_not_learn(
        "net", chance, "SGD", 10)
    assert heavy_decay((1e-4, 1e-3)) == ""
    assert heavy_decay((1000.0, 1e-3)) == ("weight_decay=1000 with lr=0.001 pulls the "
                                           "weights 100% of the way to zero each step")
