"""The graph-kept-alive check: losses kept with their autograd graph across steps.

Real script runs only: the check follows the autograd nodes of the user's own losses.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import assert_ran_quiet, findings_of, line_starting
from torchdoctor.engine.runner import diagnose
from torchdoctor.findings import Finding, Report, Severity

CHECK = "graph-kept-alive"
BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"



# ---------------------------------------------------------------- example programs


@pytest.mark.parametrize(("program", "keeper", "variable"), [
    ("graph_kept_alive", "total += loss", "total"),
    ("graph_kept_alive_list", "losses.append(loss)", "losses")])
def test_kept_losses_are_found_at_the_accumulating_line(
        program: str, keeper: str, variable: str,
        example_report: Callable[[str], Report]) -> None:
    path = BUGS / f"{program}.py"
    found = findings_of(example_report(program), CHECK)
    assert len(found) == 1
    assert found[0].severity is Severity.WARNING
    assert found[0].location.endswith(f"{path.name}:{line_starting(path, keeper)}")
    backward = line_starting(path, "loss.backward()")
    assert found[0].message == (
        f"`{variable}` holds the losses of finished steps with their autograd graphs "
        f"(backward at examples/bugs/{path.name}:{backward}): every step's graph stays in "
        "memory, which grows with each step")
    assert "loss.item()" in found[0].hint


def test_fixed_list_program_is_quiet(example_report: Callable[[str], Report]) -> None:
    assert_ran_quiet(example_report("graph_kept_alive_list_fixed"), CHECK)


# ---------------------------------------------------------------- loops written to tmp_path

PROGRAM = """\
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
data = TensorDataset(torch.randn(256, 20), torch.randint(0, 5, (256,)))
model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
critic = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
critic_optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
total_loss, losses, previous = 0.0, [], None

for epoch in range(3):
    for i, (x, y) in enumerate(DataLoader(data, batch_size=16)):
{body}
"""


def _check(tmp_path: Path, body: str) -> Report:
    path = tmp_path / "train.py"
    inner = textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 8)
    path.write_text(PROGRAM.format(body=inner), encoding="utf-8")
    return diagnose(str(path), select=[CHECK])


def _found(tmp_path: Path, body: str) -> list[Finding]:
    found = findings_of(_check(tmp_path, body), CHECK)
    assert all(f.severity is Severity.WARNING for f in found)
    return found


def _line(tmp_path: Path, code: str) -> str:
    return f"train.py:{line_starting(tmp_path / 'train.py', code)}"


@pytest.mark.slow
def test_reassigned_sum_at_module_level_is_found(tmp_path: Path, one_thread: None) -> None:
    found = _found(tmp_path, """
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total_loss = total_loss + loss
    """)
    assert len(found) == 1 and found[0].message.startswith("`total_loss` holds")
    assert found[0].location.endswith(_line(tmp_path, "total_loss = total_loss + loss"))


@pytest.mark.slow
def test_hand_written_updates_keeping_losses_are_found(tmp_path: Path,
                                                       one_thread: None) -> None:
    found = _found(tmp_path, """
        loss = loss_fn(model(x), y)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
                p.grad = None
        losses.append(loss)
    """)
    assert len(found) == 1
    assert found[0].location.endswith(_line(tmp_path, "losses.append(loss)"))


@pytest.mark.slow
@pytest.mark.parametrize("keep", [
    "total_loss += loss.item()", "losses.append(loss.detach())",
    "previous = loss  # the last step's loss only: not growing"])
def test_numbers_detached_tensors_and_the_last_loss_are_quiet(
        keep: str, tmp_path: Path, one_thread: None) -> None:
    assert_ran_quiet(_check(tmp_path, f"""
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        {keep}
    """), CHECK)


@pytest.mark.slow
def test_gradient_accumulation_is_quiet(tmp_path: Path, one_thread: None) -> None:
    assert_ran_quiet(_check(tmp_path, """
        loss = loss_fn(model(x), y) / 4
        loss.backward()
        total_loss += loss.item()
        if (i + 1) % 4 == 0:
            optimizer.step()
            optimizer.zero_grad()
    """), CHECK)


@pytest.mark.slow
def test_gan_and_grad_scaler_are_quiet(tmp_path: Path, one_thread: None) -> None:
    assert_ran_quiet(_check(tmp_path, """
        scaler = torch.amp.GradScaler("cpu")
        fake = model(x)
        critic_optimizer.zero_grad()
        critic_loss = critic(fake.detach()).mean() * (1e38 if i == 0 else 1.0)
        scaler.scale(critic_loss).backward()
        scaler.step(critic_optimizer)
        scaler.update()
        optimizer.zero_grad()
        generator_loss = -critic(fake).mean()
        generator_loss.backward()
        optimizer.step()
    """), CHECK)


@pytest.mark.slow
def test_dcgan_holding_the_last_iterations_sum_is_quiet(tmp_path: Path,
                                                        one_thread: None) -> None:
    # pytorch/examples dcgan: two backward passes and two optimizer steps per iteration,
    # and errD (a sum of both losses, graph included) lives until the next iteration
    # rebinds it, after that iteration's first backward passes
    assert_ran_quiet(_check(tmp_path, """
        critic.zero_grad()
        err_real = critic(torch.randn(16, 5)).mean()
        err_real.backward()
        fake = model(x)
        err_fake = -critic(fake.detach()).mean()
        err_fake.backward()
        err_critic = err_real + err_fake
        critic_optimizer.step()
        model.zero_grad()
        err_generator = critic(fake).mean()
        err_generator.backward()
        optimizer.step()
        print(err_critic.item(), err_generator.item())
    """), CHECK)


@pytest.mark.slow
def test_lbfgs_closure_is_quiet(tmp_path: Path, one_thread: None) -> None:
    # LBFGS holds its closure's first loss for the whole step
    assert_ran_quiet(_check(tmp_path, """
        lbfgs = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=6)

        def closure():
            lbfgs.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        total_loss += lbfgs.step(closure).item()
    """), CHECK)
