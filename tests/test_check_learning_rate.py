"""The learning-rate check: updates of the script's own optimizer that are negligible
or as large as the weights.

The example programs and loops written to tmp_path are real script runs; the rules
(warmups, frozen groups, small groups, LBFGS) are also tested on update records
directly, where the numbers can be chosen.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import assert_ran_quiet, findings_of, line_starting
from torchdoctor.diagnoses import learning_rate
from torchdoctor.engine.runner import diagnose
from torchdoctor.findings import Outcome, Report, Severity
from torchdoctor.scriptrun.observations import CodeLocation, UpdateRecord

CHECK = "learning-rate"
BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"



# ---------------------------------------------------------------- example programs


def test_adam_at_1e_9_is_an_error_at_the_step_line(
        example_report: Callable[[str], Report]) -> None:
    path = BUGS / "learning_rate.py"
    found = findings_of(example_report("learning_rate"), CHECK)
    assert len(found) == 1
    assert found[0].severity is Severity.ERROR
    assert found[0].location.endswith(f"{path.name}:{line_starting(path, 'optimizer.step()')}")
    assert found[0].message.startswith("Adam param group 0 (layers.1.weight, ...) moves the "
                                       "weights by at most ")
    assert "at lr=1e-09: 100,000 steps change them by less than 1%" in found[0].message
    assert "raise the learning rate" in found[0].hint


def test_sgd_at_10_is_a_warning(example_report: Callable[[str], Report]) -> None:
    found = findings_of(example_report("learning_rate_large"), CHECK)
    assert len(found) == 1
    assert found[0].severity is Severity.WARNING
    assert "times their own size in one step at lr=10" in found[0].message
    assert "lower the learning rate" in found[0].hint


def test_fixed_large_program_is_quiet(example_report: Callable[[str], Report]) -> None:
    assert_ran_quiet(example_report("learning_rate_large_fixed"), CHECK)


def test_updates_that_diverged_into_nan_are_left_to_nan_loss(
        example_report: Callable[[str], Report]) -> None:
    # SGD lr=1000: nan-loss reports the divergence with the learning rate as its cause;
    # the same cause is not reported twice
    report = example_report("nan_loss")
    assert [f.severity for f in findings_of(report, "nan-loss")] == [Severity.ERROR]
    assert "learning rate too high" in findings_of(report, "nan-loss")[0].message
    assert_ran_quiet(report, CHECK)


# ---------------------------------------------------------------- the rules, on records


def _record(ratios: list[float], lrs: list[float] | float = 1e-3, optimizer: str = "Adam",
            values: int = 10_000, initial_lr: float | None = None) -> UpdateRecord:
    lrs = lrs if isinstance(lrs, list) else [lrs] * len(ratios)
    return UpdateRecord(optimizer=0, optimizer_type=optimizer, group=0, first_param="fc.weight",
                        location=CodeLocation("train.py", 12), lrs=lrs, ratios=ratios,
                        initial_lr=initial_lr, values=values)


def _severities(record: UpdateRecord) -> list[Severity]:
    return [f.severity for f in learning_rate.findings([record])]


def test_healthy_update_sizes_are_quiet() -> None:
    # the extremes measured on healthy programs (see the diagnosis' docstring)
    assert _severities(_record([3.7e-4, 5.9e-4, 7.5e-4])) == []
    assert _severities(_record([0.39, 0.30, 0.21], lrs=0.03)) == []
    assert _severities(_record([1.4e-5] * 5, lrs=1e-4, optimizer="SGD")) == []


def test_negligible_steps_are_an_error_for_adam_and_a_warning_for_sgd() -> None:
    assert _severities(_record([1e-8] * 5, lrs=1e-9)) == [Severity.ERROR]
    assert _severities(_record([5e-7] * 5, lrs=1e-7)) == [Severity.WARNING]
    [sgd] = learning_rate.findings([_record([1e-11] * 5, lrs=1e-9, optimizer="SGD")])
    assert sgd.severity is Severity.WARNING and "with SGD the step also scales" in sgd.message
    assert sgd.location == "train.py:12"


def test_frozen_group_and_warmup_are_not_judged() -> None:
    assert _severities(_record([0.0] * 5, lrs=0.0)) == []  # lr=0: frozen on purpose
    # nanoGPT's warmup from lr~0: the lr rises over the measured steps
    assert _severities(_record([1e-9, 2e-9, 3e-9], lrs=[3e-10, 6e-10, 9e-10])) == []
    assert _severities(_record([14.0, 5.0, 3.0], lrs=[0.1, 0.5, 1.0])) == []


def test_a_scheduler_start_below_its_base_lr_is_judged_at_the_base() -> None:
    # LinearLR(start_factor=1e-4) on lr=1e-3: the steps are tiny now, not later
    assert _severities(_record([2e-8] * 3, lrs=1e-7, initial_lr=1e-3)) == []
    assert _severities(_record([2e-8] * 3, lrs=1e-7, initial_lr=1e-7)) == [Severity.ERROR]


def test_huge_steps_are_a_warning_except_for_small_or_zero_started_groups() -> None:
    assert _severities(_record([14.0, 0.7, 0.5], lrs=1.0)) == [Severity.WARNING]
    # a raw regression's few weights move far from a tiny init
    assert _severities(_record([5.1, 0.23, 0.14], lrs=5.0, values=3)) == []
    assert _severities(_record([math.nan, 1.0, 0.5], lrs=1e-3)) == []  # zero-initialised
    assert _severities(_record([3.9, 2.0, 2.0], lrs=0.8, optimizer="LBFGS")) == []


def test_a_healthy_aggressive_first_adam_step_is_not_huge() -> None:
    # pytorch/examples mnist_forward_forward: Adam lr=0.03 on Linear(784, 500) measures
    # these ratios and trains well; Adam lr=0.1 on the same width measures about 4.5
    assert _severities(_record([1.18, 0.64], lrs=0.03)) == []
    assert _severities(_record([4.5, 0.68, 0.41], lrs=0.1)) == [Severity.WARNING]


# ---------------------------------------------------------------- loops written to tmp_path

PROGRAM = """\
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
data = TensorDataset(torch.randn(256, 20), torch.randint(0, 5, (256,)))
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
loss_fn = nn.CrossEntropyLoss()
{setup}

if __name__ == "__main__":
    for epoch in range(3):
        for i, (x, y) in enumerate(DataLoader(data, batch_size=16)):
{body}
"""

STEP = """
    optimizer.zero_grad()
    loss_fn(model(x), y).backward()
    optimizer.step()
"""


def _check(tmp_path: Path, setup: str, body: str = STEP) -> Report:
    path = tmp_path / "train.py"
    inner = textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 12)
    path.write_text(PROGRAM.format(setup=textwrap.dedent(setup).strip("\n"), body=inner),
                    encoding="utf-8")
    return diagnose(str(path), select=[CHECK])


@pytest.mark.slow
def test_fine_tuning_lr_on_adam_is_quiet(tmp_path: Path, one_thread: None) -> None:
    setup = "optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)"
    assert_ran_quiet(_check(tmp_path, setup), CHECK)


@pytest.mark.slow
def test_one_cycle_is_quiet(tmp_path: Path, one_thread: None) -> None:
    setup = """
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1,
                                                        total_steps=100)
    """
    assert_ran_quiet(_check(tmp_path, setup, STEP + "    scheduler.step()\n"), CHECK)


@pytest.mark.slow
def test_a_group_frozen_with_lr_0_is_quiet(tmp_path: Path, one_thread: None) -> None:
    setup = """
        optimizer = torch.optim.Adam([
            {"params": model[0].parameters(), "lr": 0.0},  # frozen through its lr
            {"params": model[2].parameters()}], lr=1e-3)
    """
    report = _check(tmp_path, setup)
    assert_ran_quiet(report, CHECK)


@pytest.mark.slow
def test_manual_warmup_from_zero_is_quiet(tmp_path: Path, one_thread: None) -> None:
    # nanoGPT's get_lr: linear warmup from lr ~ 0 over 2000 iterations, set by hand
    setup = "optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4)\nstep = 0"
    body = """
    step += 1
    for group in optimizer.param_groups:
        group["lr"] = 6e-4 * step / 2001
""" + STEP
    assert_ran_quiet(_check(tmp_path, setup, body), CHECK)


@pytest.mark.slow
def test_grad_scaler_skipping_an_overflow_is_quiet(tmp_path: Path, one_thread: None) -> None:
    setup = """
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu")
    """
    assert_ran_quiet(_check(tmp_path, setup, """
        optimizer.zero_grad()
        loss = loss_fn(model(x), y) * (1e38 if i == 0 else 1.0)  # overflows once
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    """), CHECK)


@pytest.mark.slow
def test_lr_1e_9_in_a_loop_is_found_once_per_group(tmp_path: Path,
                                                   one_thread: None) -> None:
    setup = """
        optimizer = torch.optim.Adam([{"params": model[0].parameters()},
                                      {"params": model[2].parameters(), "lr": 1e-3}],
                                     lr=1e-9)
    """
    found = findings_of(_check(tmp_path, setup), CHECK)
    assert [(f.severity, f.message.split(" (")[0]) for f in found] == [
        (Severity.ERROR, "Adam param group 0")]
    step_line = line_starting(tmp_path / "train.py", "optimizer.step()")
    assert found[0].location.endswith(f"train.py:{step_line}")


@pytest.mark.slow
def test_no_optimizer_is_skipped_not_passed(tmp_path: Path, one_thread: None) -> None:
    body = """
        loss_fn(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
                p.grad = None
    """
    result = _check(tmp_path, "lr = 0.01", body).result(CHECK)
    assert result is not None and result.outcome is Outcome.SKIPPED
