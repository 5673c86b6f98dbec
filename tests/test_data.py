"""torchdoctor.reference.data: data root resolution, real data, the synthetic fallback."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from torchdoctor.reference import data
from torchdoctor.reference.data import (
    RAW_FILES,
    FallbackNotice,
    SyntheticFashionMNIST,
    data_root,
    dataset_kind,
    has_fashion_mnist,
    load_fashion_mnist,
    reference_batch,
)
from torchdoctor.reference.trainer import FashionMNISTClassifier, evaluate, reference_loss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHDOCTOR_OFFLINE", "1")


def test_data_root_explicit_then_env_then_cwd_data(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCHDOCTOR_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "given") == tmp_path / "given"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("TORCHDOCTOR_DATA")
    assert data_root() == Path("data")


def test_has_fashion_mnist_needs_all_four_raw_files(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES[:-1]:
        (raw / name).write_bytes(b"")
    assert not has_fashion_mnist(tmp_path)
    (raw / RAW_FILES[-1]).write_bytes(b"")
    assert has_fashion_mnist(tmp_path)


def test_synthetic_items_look_like_fashion_mnist_to_tensor() -> None:
    dataset = SyntheticFashionMNIST(train=False, size=256)
    image, label = dataset[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    x, y = next(iter(DataLoader(dataset, batch_size=256)))
    assert x.min() >= 0 and x.max() <= 1 and 0.1 < float(x.mean()) < 0.5
    assert y.dtype == torch.long and len(y.unique()) == 10
    assert len(dataset.classes) == 10


def test_synthetic_is_deterministic_and_splits_differ() -> None:
    first, again = SyntheticFashionMNIST(train=True, size=500), SyntheticFashionMNIST(True, 500)
    test = SyntheticFashionMNIST(train=False, size=500)
    assert torch.equal(first.data, again.data) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.data, test.data)


def test_synthetic_data_never_touches_global_rng(offline: None, tmp_path: Path) -> None:
    before = torch.get_rng_state()
    SyntheticFashionMNIST(train=True, size=300)
    reference_batch(32, root=tmp_path, seed=5)
    assert torch.equal(before, torch.get_rng_state())


def test_synthetic_data_is_learnable_by_the_reference_mlp() -> None:
    train = SyntheticFashionMNIST(train=True, size=100 * 32)
    test = SyntheticFashionMNIST(train=False, size=1000)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FashionMNISTClassifier()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for x, y in DataLoader(train, batch_size=32):
            optimizer.zero_grad()
            reference_loss()(model(x), y).backward()
            optimizer.step()
    _, accuracy = evaluate(model, DataLoader(test, batch_size=500), reference_loss())
    assert accuracy > 0.75  # chance is 0.1; about 0.88 after these 100 steps


def test_offline_with_empty_root_falls_back_without_downloading(
        offline: None, tmp_path: Path) -> None:
    dataset = load_fashion_mnist(train=True, root=tmp_path)
    assert dataset_kind(dataset) == "synthetic"
    assert not (tmp_path / "FashionMNIST").exists()  # torchvision was never asked


def test_download_false_falls_back_even_when_online_is_allowed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORCHDOCTOR_OFFLINE", raising=False)
    dataset = load_fashion_mnist(train=False, root=tmp_path, download=False)
    assert dataset_kind(dataset) == "synthetic"
    assert not (tmp_path / "FashionMNIST").exists()


def test_unreadable_files_fall_back_instead_of_crashing(offline: None, tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES:
        (raw / name).write_bytes(b"not an idx file")
    assert dataset_kind(load_fashion_mnist(train=True, root=tmp_path)) == "synthetic"


@pytest.mark.slow
def test_real_data_is_used_when_present(shared_data: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    test_set = load_fashion_mnist(train=False, root=shared_data)
    assert dataset_kind(test_set) == "fashion-mnist"
    image, label = test_set[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= label < 10
    monkeypatch.setenv("TORCHDOCTOR_DATA", str(shared_data))
    x, y, kind = reference_batch(16)
    assert kind == "fashion-mnist" and x.shape == (16, 1, 28, 28) and y.dtype == torch.long


def test_reference_batch_is_deterministic_per_seed(offline: None, tmp_path: Path) -> None:
    x, y, kind = reference_batch(64, root=tmp_path, seed=0)
    x_again, y_again, _ = reference_batch(64, root=tmp_path, seed=0)
    x_other, _, _ = reference_batch(64, root=tmp_path, seed=1)
    assert kind == "synthetic"
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.long
    assert torch.equal(x, x_again) and torch.equal(y, y_again)
    assert not torch.equal(x, x_other)
    x_again.zero_()  # callers get their own tensors, not a view of a cache
    assert torch.equal(x, reference_batch(64, root=tmp_path, seed=0)[0])


def test_dataset_kind_sees_through_subsets_and_loaders() -> None:
    synthetic = SyntheticFashionMNIST(train=False, size=10)
    assert dataset_kind(DataLoader(Subset(synthetic, [0, 1]))) == "synthetic"
    with pytest.raises(TypeError, match="TensorDataset"):
        dataset_kind(TensorDataset(torch.zeros(2)))


def test_fallback_notice_prints_once_naming_root_and_remedy(tmp_path: Path) -> None:
    notice, stream = FallbackNotice(), io.StringIO()
    assert notice.emit(tmp_path, "TORCHDOCTOR_OFFLINE=1", stream)
    assert not notice.emit(tmp_path / "other", "download=False", stream)
    text = stream.getvalue()
    assert text.count("synthetic") == 1 and notice.shown
    assert str(tmp_path.resolve() / "FashionMNIST" / "raw") in text
    assert "--data DIR" in text and "TORCHDOCTOR_DATA" in text


@pytest.mark.slow
def test_fallback_is_announced_once_per_process_without_torchvision(tmp_path: Path) -> None:
    program = (
        "import sys\n"
        "from torchdoctor.reference.data import load_fashion_mnist, reference_batch\n"
        "root = sys.argv[1]\n"
        "load_fashion_mnist(True, root); load_fashion_mnist(False, root)\n"
        "reference_batch(8, root=root)\n"
        "print('torchvision imported:', 'torchvision' in sys.modules)\n"
    )
    env = {**os.environ, "TORCHDOCTOR_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", program, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no usable FashionMNIST data under") == 1
    assert "TORCHDOCTOR_OFFLINE=1" in done.stderr
    assert "torchvision imported: False" in done.stdout  # it costs 2 s to import
    assert data.SYNTHETIC in done.stderr
