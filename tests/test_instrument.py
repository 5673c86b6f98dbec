"""Script mode: budgets, timeout, what is observed, and that everything is restored."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from torchdoctor.engine.context import CheckOptions
from torchdoctor.scriptrun import budget
from torchdoctor.scriptrun.observations import RunStatus
from torchdoctor.scriptrun.script import run_script

TRAINING = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.1),
                      nn.Linear(32, 10))
data = TensorDataset(torch.rand(6400, 1, 28, 28), torch.randint(0, 10, (6400,)))
loader = DataLoader(data, batch_size=64)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
loss_fn = nn.CrossEntropyLoss()
for epoch in range(EPOCHS):
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            model(x)
print("finished training")
"""


def _program(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(source))
    return path


def test_batches_per_pass_are_capped_and_both_phases_observed(tmp_path: Path) -> None:
    result = run_script(_program(tmp_path, TRAINING.replace("EPOCHS", "2")),
                        CheckOptions(limit_batches=3, max_steps=100))
    run = result.run
    assert run.status is RunStatus.COMPLETED
    assert run.loader_passes == 4 and run.batches == 12
    assert len(run.applied_steps) == 6
    assert [f.training for f in run.forwards] == [True] * 3 + [False] * 3 + [True] * 3 + \
        [False] * 3
    assert all(f.backward_followed == f.training for f in run.forwards)
    assert all(f.grad_enabled == f.training for f in run.forwards)
    assert run.losses[0].loss == "CrossEntropyLoss" and run.losses[0].value is not None
    assert "finished training" in result.output
    assert run.carried_grads == []
    assert len(result.snapshots) == 1 and result.models[0] is result.namespace["model"]


def test_steps_beyond_the_budget_are_skipped_and_endless_epochs_cut(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "MAX_PASSES", 60)  # the cap's logic, at a test's cost
    result = run_script(_program(tmp_path, TRAINING.replace("EPOCHS", "1000")),
                        CheckOptions(limit_batches=4, max_steps=5))
    run = result.run
    assert run.status is RunStatus.STOPPED
    assert run.cut == "safety cap: more than 60 DataLoader passes"
    # --max-steps applied, plus the first STEPS_PER_PASS steps of the second full pass
    assert len(run.applied_steps) == 5 + 1
    # 30 training passes (alternating with 30 evaluation passes): 2 full, 28 of 1 batch
    assert run.steps[-1].skipped and len(run.steps) == 4 + 4 + 28
    # the optimizer's own step method is back
    assert "step" not in vars(result.namespace["optimizer"])


def test_snapshot_is_the_model_before_training(tmp_path: Path) -> None:
    result = run_script(_program(tmp_path, TRAINING.replace("EPOCHS", "1")), CheckOptions())
    trained, snapshot = result.models[0], result.snapshots[0]
    assert not torch.equal(trained[1].weight, snapshot[1].weight)


def test_everything_patched_is_restored(tmp_path: Path) -> None:
    from torch.nn.modules import module
    from torch.optim import optimizer

    originals = (DataLoader.__iter__, torch.Tensor.backward, nn.functional.cross_entropy,
                 torch.optim.Optimizer.zero_grad, nn.Module.zero_grad, torch.save, torch.load,
                 nn.Module.load_state_dict)
    argv, main_module, path = sys.argv[:], sys.modules["__main__"], sys.path[:]
    source = TRAINING.replace("EPOCHS", "1") + (
        f"torch.save(model.state_dict(), {str(tmp_path / 'm.pt')!r})\n"
        f"model.load_state_dict(torch.load({str(tmp_path / 'm.pt')!r}, weights_only=True))\n")
    result = run_script(_program(tmp_path, source), CheckOptions())
    assert [c.kind for c in result.run.checkpoints] == ["save", "load", "load_state_dict"]
    assert (DataLoader.__iter__, torch.Tensor.backward, nn.functional.cross_entropy,
            torch.optim.Optimizer.zero_grad, nn.Module.zero_grad, torch.save, torch.load,
            nn.Module.load_state_dict) == originals
    assert (sys.argv, sys.modules["__main__"], sys.path) == (argv, main_module, path)
    assert not module._global_forward_hooks and not module._global_forward_pre_hooks
    assert not optimizer._global_optimizer_pre_hooks
    assert not optimizer._global_optimizer_post_hooks


def test_timeout_ends_an_endless_script(tmp_path: Path) -> None:
    result = run_script(_program(tmp_path, "import time\nwhile True:\n    time.sleep(0.01)\n"),
                        CheckOptions(timeout=1.0))
    assert result.run.status is RunStatus.TIMEOUT
    assert result.run.seconds < 10


def test_exit_code_and_crash_are_recorded(tmp_path: Path) -> None:
    exited = run_script(_program(tmp_path, "import sys\nsys.exit(3)\n"), CheckOptions())
    assert exited.run.status is RunStatus.EXITED
    crashed = run_script(_program(tmp_path, TRAINING.replace("EPOCHS", "1").replace(
        "nn.Flatten(), ", "")), CheckOptions())
    error = crashed.run.error
    assert crashed.run.status is RunStatus.CRASHED and error is not None
    assert error.type_name == "RuntimeError" and "mat1 and mat2" in error.message
    assert error.location is not None and error.location.file.endswith("train.py")
    assert [c.module.qualname for c in error.module_stack] == ["", "0"]
    assert error.module_stack[-1].inputs[0].shape == (64, 1, 28, 28)
    assert not error.before_training


def test_functional_loss_outside_modules_is_recorded(tmp_path: Path) -> None:
    source = TRAINING.replace("EPOCHS", "1").replace(
        "loss = loss_fn(model(x), y)",
        "loss = torch.nn.functional.cross_entropy(model(x), y)")
    run = run_script(_program(tmp_path, source), CheckOptions()).run
    assert {rec.loss for rec in run.losses} == {"cross_entropy"}


def test_nonfinite_loss_is_localised_to_the_module(tmp_path: Path) -> None:
    source = """
    import torch
    from torch import nn

    class LogNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.log = Log()
        def forward(self, x):
            return self.log(torch.relu(self.fc(x)) * 0)

    class Log(nn.Module):
        def forward(self, x):
            return torch.log(x)

    model = LogNet()
    loss = model(torch.ones(2, 4)).sum()
    loss.backward()
    """
    run = run_script(_program(tmp_path, source), CheckOptions()).run
    assert run.nonfinite, run
    record = run.nonfinite[0]
    assert record.module is not None and record.module.qualname == "log"
    assert record.detail == "inputs were finite"


def test_each_backward_pass_is_counted_once_while_ops_are_traced(tmp_path: Path) -> None:
    # the op tracer's __torch_function__ mode re-dispatches Tensor.backward through the
    # patched attribute: the traced steps must not count their backward twice
    options = CheckOptions(limit_batches=3, max_steps=100, trace_steps=3)
    run = run_script(_program(tmp_path, TRAINING.replace("EPOCHS", "2")), options).run
    assert len(run.applied_steps) == 6
    assert len(run.backwards) == 6
