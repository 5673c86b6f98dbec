"""The healthy examples run as programs, their hooks work, and the doctor finds nothing.

Run offline on the synthetic data, with reduced sizes, so they stay quick.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from torchdoctor.reference.trainer import train_steps

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LAB = EXAMPLES / "fashion_mnist_lab.py"
HOOKS = EXAMPLES / "custom_model_hooks.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def run_example(path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python path args`` offline, with an empty data root, in ``cwd``."""
    env = {**os.environ, "TORCHDOCTOR_OFFLINE": "1", "TORCHDOCTOR_DATA": str(cwd / "data"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(path), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240, check=False)


def load_module(path: Path) -> ModuleType:
    """Import an example by path, not as __main__ (its training loop does not run)."""
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_fashion_mnist_lab_runs_offline(tmp_path: Path) -> None:
    done = run_example(LAB, "--epochs", "2", "--limit-batches", "5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Accuracy:") == 3  # two epochs, then the reloaded model
    assert "Epoch 2" in done.stdout and "Done!" in done.stdout
    assert "Saved and reloaded the weights" in done.stdout
    assert done.stderr.count("synthetic") == 1  # the fallback is announced once
    assert not list(tmp_path.rglob("*.pth"))  # the checkpoint lived in a temp dir


@pytest.mark.slow
def test_custom_model_hooks_runs(tmp_path: Path) -> None:
    done = run_example(HOOKS, "--epochs", "2", "--samples", "256", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "test mse" in lines[-1]


def test_custom_hooks_overfit_one_batch_with_their_own_loss_and_optimizer() -> None:
    hooks = load_module(HOOKS)
    model = hooks.torchdoctor_model()
    assert model is not hooks.torchdoctor_model()  # a new instance per call
    inputs, targets = hooks.torchdoctor_batch()
    assert torch.equal(inputs, hooks.torchdoctor_batch()[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = hooks.torchdoctor_model()
    optimizer = hooks.torchdoctor_optimizer(model.parameters())
    losses = train_steps(model, (inputs, targets), hooks.torchdoctor_loss(), optimizer, 200)
    assert model(inputs).shape == targets.shape  # no silent broadcasting in MSELoss
    assert losses[-1] < 0.01 * losses[0]


@pytest.mark.parametrize("example", [LAB, HOOKS], ids=lambda p: p.stem)
def test_torchdoctor_check_finds_nothing_wrong(example: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    from torchdoctor.engine.context import CheckOptions
    from torchdoctor.engine.runner import diagnose

    monkeypatch.setenv("TORCHDOCTOR_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # ./data is empty here: synthetic data
    report = diagnose(str(example), CheckOptions(limit_batches=2, max_steps=6))
    assert report.findings == [], report.findings
    assert report.exit_code == 0 and not report.crashed
    assert "script" in report.mode and "model" in report.mode
