"""The params-not-updating check: backward passes that no optimizer step follows, and
gradients on parameters that no optimizer holds.

Real script runs only: both bugs are seen in what the user's own loop does.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

from tests.helpers import assert_ran_quiet, findings_of, line_starting
from torchdoctor.engine.runner import diagnose
from torchdoctor.findings import Finding, Report, Severity

CHECK = "params-not-updating"
BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"



# ---------------------------------------------------------------- example programs


def test_new_head_outside_the_optimizer_is_named(
        example_report: Callable[[str], Report]) -> None:
    found = findings_of(example_report("params_not_updating"), CHECK)
    assert len(found) == 1
    assert found[0].severity is Severity.ERROR
    assert found[0].message == (
        "2 parameter(s) receive gradients but are in no optimizer: the optimizer does not "
        "hold layers.7.weight, layers.7.bias, so they never change")
    assert "after the model is complete" in found[0].hint


def test_step_without_parentheses_is_found_at_the_backward_line(
        example_report: Callable[[str], Report]) -> None:
    path = BUGS / "params_not_updating_no_step.py"
    found = findings_of(example_report("params_not_updating_no_step"), CHECK)
    assert len(found) == 1
    assert found[0].severity is Severity.ERROR
    assert found[0].location.endswith(f"{path.name}:{line_starting(path, 'loss.backward()')}")
    assert "never stepped" in found[0].message and "Adam" in found[0].message
    zero_grad = line_starting(path, "optimizer.zero_grad()")
    assert f"{path.name}:{zero_grad}) never stepped" in found[0].message
    assert "`optimizer.step()`" in found[0].hint


def test_fixed_step_program_is_quiet(example_report: Callable[[str], Report]) -> None:
    assert_ran_quiet(example_report("params_not_updating_no_step_fixed"), CHECK)


# ---------------------------------------------------------------- loops written to tmp_path

PROGRAM = """\
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
data = TensorDataset(torch.randn(256, 20), torch.randint(0, 5, (256,)))
model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
other = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
{setup}
loss_fn = nn.CrossEntropyLoss()

if __name__ == "__main__":
    for epoch in range(3):
        for i, (x, y) in enumerate(DataLoader(data, batch_size=16)):
{body}
"""

PLAIN = "optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)"
STEP = """
    optimizer.zero_grad()
    loss_fn(model(x), y).backward()
    optimizer.step()
"""


def _check(tmp_path: Path, body: str, setup: str = PLAIN) -> Report:
    """Diagnose the program above with ``setup`` before the loop and ``body`` in it."""
    path = tmp_path / "train.py"
    inner = textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 12)
    setup = textwrap.dedent(setup).strip("\n")
    path.write_text(PROGRAM.format(setup=setup, body=inner), encoding="utf-8")
    return diagnose(str(path), select=[CHECK])


def _found(report: Report) -> list[Finding]:
    found = findings_of(report, CHECK)
    assert all(f.severity is Severity.ERROR for f in found)
    return found


def test_plain_loop_is_quiet(tmp_path: Path) -> None:
    assert_ran_quiet(_check(tmp_path, STEP), CHECK)


def test_step_never_called_is_found(tmp_path: Path) -> None:
    found = _found(_check(tmp_path, """
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
    """))
    assert len(found) == 1 and "never stepped" in found[0].message


def test_layer_replaced_after_the_optimizer_is_found(tmp_path: Path) -> None:
    found = _found(_check(tmp_path, STEP, setup=PLAIN + "\nmodel[2] = nn.Linear(32, 5)"))
    assert len(found) == 1
    assert "the optimizer does not hold 2.weight, 2.bias" in found[0].message


def test_params_added_with_add_param_group_are_quiet(tmp_path: Path) -> None:
    setup = PLAIN + "\nmodel[2] = nn.Linear(32, 5)\n" \
        "optimizer.add_param_group({'params': model[2].parameters()})"
    assert_ran_quiet(_check(tmp_path, STEP, setup=setup), CHECK)


def test_optimizer_rebuilt_every_epoch_is_quiet(tmp_path: Path) -> None:
    # each epoch's optimizer may reuse the freed previous one's id: it must count as new
    rebuild = """
        if i == 0:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1 / (epoch + 1))
    """
    assert_ran_quiet(_check(tmp_path, textwrap.dedent(rebuild) + textwrap.dedent(STEP)),
                     CHECK)


def test_gradient_accumulation_is_quiet(tmp_path: Path) -> None:
    assert_ran_quiet(_check(tmp_path, """
        (loss_fn(model(x), y) / 4).backward()
        if (i + 1) % 4 == 0:
            optimizer.step()
            optimizer.zero_grad()
    """), CHECK)


def test_frozen_layer_outside_the_optimizer_is_quiet(tmp_path: Path) -> None:
    setup = """
        model[0].requires_grad_(False)
        optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1)
    """
    assert_ran_quiet(_check(tmp_path, STEP, setup=setup), CHECK)


def test_second_optimizer_stepping_every_k_iterations_is_quiet(tmp_path: Path) -> None:
    # the second optimizer is first seen at its first step, after the first one stepped
    setup = PLAIN + "\nother_optimizer = torch.optim.SGD(other.parameters(), lr=0.01)"
    assert_ran_quiet(_check(tmp_path, """
        optimizer.zero_grad()
        (loss_fn(model(x), y) + other(model(x).detach()).pow(2).mean()).backward()
        optimizer.step()
        if (i + 1) % 3 == 0:
            other_optimizer.step()
            other_optimizer.zero_grad()
    """, setup=setup), CHECK)


def test_scheduler_and_grad_scaler_skipping_an_overflow_are_quiet(tmp_path: Path) -> None:
    setup = PLAIN + """
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
scaler = torch.amp.GradScaler("cpu")
"""
    assert_ran_quiet(_check(tmp_path, """
        optimizer.zero_grad()
        loss = loss_fn(model(x), y) * (1e38 if i == 0 else 1.0)  # overflows once
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    """, setup=setup), CHECK)


def test_gan_with_one_optimizer_per_model_is_quiet(tmp_path: Path) -> None:
    setup = PLAIN + "\nother_optimizer = torch.optim.Adam(other.parameters(), lr=1e-3)"
    assert_ran_quiet(_check(tmp_path, """
        fake = model(x)
        other.zero_grad()
        other(fake.detach()).mean().backward()
        other_optimizer.step()
        model.zero_grad()
        (-other(fake).mean()).backward()  # fills the critic's gradients too
        optimizer.step()
    """, setup=setup), CHECK)


def test_hand_written_updates_without_an_optimizer_are_quiet(tmp_path: Path) -> None:
    assert_ran_quiet(_check(tmp_path, """
        loss_fn(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
                p.grad = None
    """, setup="lr = 0.01"), CHECK)


# ---------------------------------------------------------------- parameters without a gradient


def test_unused_layer_in_the_optimizer_is_a_warning(
        example_report: Callable[[str], Report]) -> None:
    path = BUGS / "params_not_updating_unused.py"
    found = findings_of(example_report("params_not_updating_unused"), CHECK)
    assert len(found) == 1
    assert found[0].severity is Severity.WARNING
    assert found[0].message == (
        "2 parameter(s) in Adam never received a gradient, so its steps never change them: "
        "aux_head.weight, aux_head.bias; aux_head never ran in forward")
    assert found[0].location.endswith(f"{path.name}:{line_starting(path, 'optimizer.step()')}")
    assert "requires_grad_(False)" in found[0].hint


def test_fixed_unused_layer_program_is_quiet(example_report: Callable[[str], Report]) -> None:
    assert_ran_quiet(example_report("params_not_updating_unused_fixed"), CHECK)


def test_detached_path_is_a_warning_naming_the_cut_layer(tmp_path: Path) -> None:
    setup = "optimizer = torch.optim.Adam(list(model.parameters()) + " \
        "list(other.parameters()), lr=1e-3)"
    found = findings_of(_check(tmp_path, """
        optimizer.zero_grad()
        (loss_fn(model(x), y) + 0 * other(model(x)).detach().sum()).backward()
        optimizer.step()
    """, setup=setup), CHECK)
    assert [f.severity for f in found] == [Severity.WARNING]
    assert "4 parameter(s) in Adam never received a gradient" in found[0].message
    assert "Sequential.0.weight" in found[0].message and "never ran" not in found[0].message


def test_frozen_parameters_in_the_optimizer_are_quiet(tmp_path: Path) -> None:
    setup = PLAIN + "\nmodel[0].requires_grad_(False)"
    assert_ran_quiet(_check(tmp_path, STEP, setup=setup), CHECK)


def test_a_model_used_only_in_eval_is_quiet(tmp_path: Path) -> None:
    # ``other`` is in the optimizer but only ever runs under no_grad, in eval mode
    setup = "optimizer = torch.optim.Adam(list(model.parameters()) + " \
        "list(other.parameters()), lr=1e-3)\nother.eval()"
    assert_ran_quiet(_check(tmp_path, STEP + """
    with torch.no_grad():
        other(model(x))
    """, setup=setup), CHECK)
