"""torchdoctor.reference: the classifier, its healthy protocol, and `torchdoctor reference`."""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchdoctor.cli.reference import run_reference_cli
from torchdoctor.engine.context import CheckOptions
from torchdoctor.reference.data import SyntheticFashionMNIST, reference_batch
from torchdoctor.reference.trainer import (
    FashionMNISTClassifier,
    evaluate,
    expected_initial_loss,
    fit,
    forward,
    load_checkpoint,
    reference_loss,
    reference_optimizer,
    reference_setup,
    save_checkpoint,
    train_epoch,
    train_steps,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def seeded() -> Iterator[None]:
    """A seeded global RNG for model init and dropout, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@pytest.fixture
def batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor]:
    monkeypatch.setenv("TORCHDOCTOR_OFFLINE", "1")
    x, y, _ = reference_batch(64, root=tmp_path)
    return x, y


def small_loader(count: int = 96, batch_size: int = 32) -> DataLoader[tuple[torch.Tensor, int]]:
    return DataLoader(SyntheticFashionMNIST(train=False, size=count), batch_size=batch_size)


def test_classifier_is_the_tutorial_mlp() -> None:
    model = FashionMNISTClassifier()
    assert isinstance(model.flatten, nn.Flatten)
    kinds = [type(m) for m in model.linear_relu_stack]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    shapes = [(m.in_features, m.out_features) for m in model.linear_relu_stack
              if isinstance(m, nn.Linear)]
    assert shapes == [(784, 256), (256, 256), (256, 10)]
    assert all(m.p == 0.2 for m in model.linear_relu_stack if isinstance(m, nn.Dropout))
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_reference_loss_and_optimizer() -> None:
    model = FashionMNISTClassifier()
    optimizer = reference_optimizer(model.parameters())
    assert isinstance(reference_loss(), nn.CrossEntropyLoss)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3
    assert reference_optimizer(model.parameters(), lr=0.1).defaults["lr"] == 0.1


def test_initial_loss_is_near_ln_10(seeded: None,
                                    batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert expected_initial_loss() == pytest.approx(2.302585, abs=1e-6)
    assert expected_initial_loss(3) == pytest.approx(math.log(3))
    model = FashionMNISTClassifier().eval()
    with torch.no_grad():
        loss = float(reference_loss()(model(batch[0]), batch[1]))
    assert abs(loss - expected_initial_loss()) < 0.15


def test_forward_unpacks_tuples_only() -> None:
    bilinear = nn.Bilinear(2, 3, 1)
    a, b = torch.ones(4, 2), torch.ones(4, 3)
    assert forward(bilinear, (a, b)).shape == (4, 1)
    assert forward(nn.Linear(2, 1), a).shape == (4, 1)


def test_train_steps_lowers_the_loss(seeded: None,
                                     batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = FashionMNISTClassifier()
    losses = train_steps(model, batch, reference_loss(), reference_optimizer(model.parameters()),
                         40)
    assert len(losses) == 40
    assert losses[-1] < 0.5 * losses[0]
    assert model.training


def test_train_steps_stops_below_threshold_and_on_nan(
        seeded: None, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = FashionMNISTClassifier()
    optimizer = reference_optimizer(model.parameters())
    losses = train_steps(model, batch, reference_loss(), optimizer, 500, stop_below=1.5)
    assert losses[-1] < 1.5 and all(v >= 1.5 for v in losses[:-1]) and len(losses) < 500

    def nan_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reference_loss()(output, target) * float("nan")

    assert len(train_steps(model, batch, nan_loss, optimizer, 10)) == 1


def test_train_steps_zeroes_gradients_every_step(
        batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))  # no dropout: deterministic
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights stay put
    train_steps(model, batch, reference_loss(), optimizer, 1)
    one_step = model[1].weight.grad.clone()
    train_steps(model, batch, reference_loss(), optimizer, 3)
    # carried gradients would have summed to 4x the one-step gradient
    assert torch.allclose(model[1].weight.grad, one_step)


def test_evaluate_uses_eval_mode_and_no_grad_then_restores_the_flag() -> None:
    model = FashionMNISTClassifier()
    seen: list[tuple[bool, bool]] = []
    model.register_forward_hook(
        lambda module, args, out: seen.append((module.training, torch.is_grad_enabled())))
    loss, accuracy = evaluate(model, small_loader(), reference_loss())
    assert seen == [(False, False)] * 3
    assert model.training  # was training before: still is
    model.eval()
    evaluate(model, small_loader(), reference_loss())
    assert not model.training
    assert 0.0 <= accuracy <= 1.0 and math.isfinite(loss)


def test_evaluate_measures_loss_per_sample_and_accuracy() -> None:
    inputs = torch.tensor([[0.0, 5.0], [5.0, 0.0], [5.0, 0.0]])
    targets = torch.tensor([1, 0, 1])
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=2)
    loss, accuracy = evaluate(nn.Identity(), loader, reference_loss())
    assert accuracy == pytest.approx(2 / 3)
    assert loss == pytest.approx(float(reference_loss()(inputs, targets)), rel=1e-5)


def test_train_epoch_trains_in_train_mode_with_limit_and_progress(seeded: None) -> None:
    model = FashionMNISTClassifier().eval()
    modes: list[bool] = []
    model.register_forward_hook(lambda module, args, out: modes.append(module.training))
    calls: list[tuple[int, int]] = []
    mean = train_epoch(model, small_loader(), reference_loss(),
                       reference_optimizer(model.parameters()), limit_batches=2,
                       progress=lambda done, total, loss: calls.append((done, total)))
    assert modes == [True, True]
    assert calls == [(1, 2), (2, 2)]
    assert math.isfinite(mean) and mean > 0


def test_fit_returns_one_record_per_epoch(seeded: None) -> None:
    model = FashionMNISTClassifier()
    records = fit(model, small_loader(), small_loader(), reference_loss(),
                  reference_optimizer(model.parameters()), epochs=2, limit_batches=2)
    assert [r.epoch for r in records] == [1, 2]
    assert all(0 <= r.test_accuracy <= 1 and r.seconds >= 0 for r in records)
    assert records[0].row()[3].endswith("%")


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    model = FashionMNISTClassifier()
    path = save_checkpoint(model, tmp_path / "sub" / "model.pth")
    reloaded = load_checkpoint(FashionMNISTClassifier(), path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name])


def test_load_checkpoint_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"payload": Path("anything")}, path)  # an arbitrary object, not weights
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        load_checkpoint(FashionMNISTClassifier(), path)


def test_reference_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCHDOCTOR_OFFLINE", "1")
    setup = reference_setup(CheckOptions(seed=3, data_root=str(tmp_path)))
    assert setup.data == "synthetic" and setup.source["batch"] == "reference"
    x, y = setup.batch("cpu")
    assert x.shape == (64, 1, 28, 28) and y.dtype == torch.long
    x.zero_()  # each call is a fresh copy
    assert torch.equal(setup.make_batch()[0], reference_batch(64, root=tmp_path, seed=3)[0])
    assert isinstance(setup.make_loss(), nn.CrossEntropyLoss)
    assert isinstance(setup.make_optimizer(nn.Linear(2, 2).parameters()), torch.optim.Adam)


def test_reference_cli_trains_and_prints_a_table(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TORCHDOCTOR_OFFLINE", "1")
    before = torch.get_rng_state()
    code = run_reference_cli(epochs=1, data=str(tmp_path), limit_batches=3,
                             checkpoint=str(tmp_path / "ck" / "model.pth"))
    out, err = capsys.readouterr()
    assert code == 0
    assert "train loss" in out and "test accuracy" in out and "synthetic" in out
    assert "weights_only=True" in out and (tmp_path / "ck" / "model.pth").is_file()
    assert "SYNTHETIC" in err and "\r" not in err  # no progress line off a terminal
    assert torch.equal(before, torch.get_rng_state())


def test_reference_cli_json_is_a_list_of_records(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TORCHDOCTOR_OFFLINE", "1")
    assert run_reference_cli(epochs=2, data=str(tmp_path), limit_batches=2, fmt="json") == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert set(records[0]) >= {"train_loss", "test_loss", "test_accuracy", "seconds", "data"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epochs": 0}, "--epochs"),
    ({"epochs": 1, "device": "warp-drive"}, "device"),
    ({"epochs": 1, "device": "meta"}, "meta"),
    ({"epochs": 1, "data": "/no/such/folder"}, "does not exist"),
    ({"epochs": 1, "fmt": "yaml"}, "format"),
    ({"epochs": 1, "limit_batches": 0}, "--limit-batches"),
])
def test_reference_cli_bad_input_exits_2_with_one_message(
        kwargs: dict[str, object], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    options: dict[str, object] = {"data": None, **kwargs}
    assert run_reference_cli(**options) == 2  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert out == "" and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_reference_cli_progress_only_on_a_terminal_and_not_quiet(
        quiet: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCHDOCTOR_OFFLINE", "1")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert run_reference_cli(epochs=1, data=str(tmp_path), limit_batches=2, quiet=quiet,
                             fmt="markdown") == 0
    shown = "\repoch 1/1  batch 2/2" in terminal.getvalue()
    assert shown is not quiet
