"""FashionMNIST for the reference trainer and the checks, with an offline fallback.

Where the data comes from, in order:

1. the torchvision files under ``ROOT/FashionMNIST/raw`` (ROOT: the ``root`` argument,
   else ``$TORCHDOCTOR_DATA``, else ``./data``), loaded with
   ``torchvision.datasets.FashionMNIST(ROOT, train, download=False, transform=ToTensor())``;
2. torchvision's own download into ROOT, unless ``download=False`` or
   ``TORCHDOCTOR_OFFLINE=1`` (a 2 s probe of the download host first, so an offline
   machine falls through at once instead of waiting on torchvision's retries);
3. :class:`SyntheticFashionMNIST`, a deterministic and *learnable* stand-in of the same
   shape, announced once per process on stderr.

torchvision is imported only on the first path (it costs about 2 s).
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TextIO

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DATA_ENV = "TORCHDOCTOR_DATA"
OFFLINE_ENV = "TORCHDOCTOR_OFFLINE"
DEFAULT_ROOT = "data"

FASHION_MNIST: Literal["fashion-mnist"] = "fashion-mnist"
SYNTHETIC: Literal["synthetic"] = "synthetic"
DataKind = Literal["fashion-mnist", "synthetic"]

#: the files torchvision checks for before it reads ROOT/FashionMNIST/raw
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: torchvision's FashionMNIST mirror (probed before a download is attempted)
DOWNLOAD_HOST = ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80)
PROBE_TIMEOUT = 2.0

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$TORCHDOCTOR_DATA``, else ``./data``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(DATA_ENV) or DEFAULT_ROOT)


def has_fashion_mnist(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` holds the four raw files torchvision's FashionMNIST reads."""
    raw = Path(root) / "FashionMNIST" / "raw"
    return all((raw / name).is_file() for name in RAW_FILES)


def offline() -> bool:
    """Whether ``TORCHDOCTOR_OFFLINE`` forbids downloads (any value but "", "0")."""
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


class FallbackNotice:
    """Prints the synthetic-data notice the first time it is asked to, then stays quiet.

    One instance lives in this module, so the notice appears once per process however
    many datasets fall back (train and test sets, the checks' reference batch...).
    """

    def __init__(self) -> None:
        self._shown = False
        #: (root, reason) pairs kept instead of printed while :meth:`deferred` is active
        self._pending: list[tuple[Path, str]] | None = None

    @property
    def shown(self) -> bool:
        """Whether the notice has been printed."""
        return self._shown

    def emit(self, root: Path, reason: str, stream: TextIO | None = None) -> bool:
        """Print the notice for ``root`` unless already printed; True if printed now."""
        if self._pending is not None:
            self._pending.append((Path(root), reason))
            return False
        if self._shown:
            return False
        self._shown = True
        print(fallback_message(root, reason), file=stream or sys.stderr, flush=True)
        return True


    @contextmanager
    def deferred(self) -> Iterator[list[tuple[Path, str]]]:
        """Keep the notices asked for inside the block instead of printing them: the
        caller (``torchdoctor check``) says it in its report only when the synthetic
        set was really used, not for every script whose models merely met the
        reference batch while model mode looked for a setup."""
        before, self._pending = self._pending, []
        try:
            yield self._pending
        finally:
            self._pending = before


def fallback_message(root: Path, reason: str) -> str:
    """The notice naming where we looked, why we fell back and how to get real data."""
    raw = Path(root).resolve() / "FashionMNIST" / "raw"
    return (
        f"torchdoctor: no usable FashionMNIST data under {raw} ({reason}); using a synthetic, "
        "learnable FashionMNIST-shaped stand-in (10 classes, 1x28x28).\n"
        "torchdoctor: for real data pass --data DIR or set TORCHDOCTOR_DATA=DIR (a folder "
        "holding FashionMNIST/raw), or run once online without TORCHDOCTOR_OFFLINE=1 to "
        "download it."
    )


NOTICE = FallbackNotice()
_NOTICE = NOTICE


class SyntheticFashionMNIST(Dataset[tuple[torch.Tensor, int]]):
    """A deterministic, learnable dataset shaped like torchvision's FashionMNIST.

    Each image is one of 10 fixed class prototypes (smooth blobs on a dark border),
    scaled, mixed with some of another class and noised, stored as uint8 like the
    real set. Items are ``(float32 tensor (1, 28, 28) in [0, 1], int label)``, exactly
    what ``FashionMNIST(transform=ToTensor())`` yields, so a DataLoader collates labels
    to ``torch.long``. Everything comes from private generators: the global RNG is
    never touched. ``data``, ``targets`` and ``classes`` mirror torchvision's names.
    """

    TRAIN_SIZE = 10_000
    TEST_SIZE = 2_000
    PROTOTYPE_SEED = 20_170_825  # Fashion-MNIST's release date; any fixed value works

    def __init__(self, train: bool = True, size: int | None = None, seed: int = 0) -> None:
        self.train = train
        self.classes = list(CLASSES)
        count = size if size is not None else (self.TRAIN_SIZE if train else self.TEST_SIZE)
        generator = torch.Generator().manual_seed(2 * seed + (0 if train else 1))
        self.targets = torch.randint(0, len(CLASSES), (count,), generator=generator)
        self.data = _render(_prototypes(self.PROTOTYPE_SEED), self.targets, generator)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.data[index].to(torch.float32).div(255).unsqueeze(0)
        return image, int(self.targets[index])

    def __repr__(self) -> str:
        split = "Train" if self.train else "Test"
        return f"SyntheticFashionMNIST(split={split}, size={len(self)})"


def _prototypes(seed: int) -> torch.Tensor:
    """10 smooth patterns (10, 28, 28) in [0, 1], dark towards the border like clothes
    photographed on black."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(len(CLASSES), 1, 7, 7, generator=generator)
    coarse = coarse * (coarse > 0.4)
    fine = F.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)
    axis = torch.linspace(-1, 1, 28)
    window = (1 - axis.abs().pow(3)).clamp(min=0)
    fine = fine.squeeze(1) * window[:, None] * window[None, :]
    return fine / fine.amax(dim=(1, 2), keepdim=True)


def _render(prototypes: torch.Tensor, targets: torch.Tensor,
            generator: torch.Generator) -> torch.Tensor:
    """uint8 images (N, 28, 28): scaled own prototype + some of another + noise.

    The mix weight sometimes rivals the own-class scale, so (like the real set) a
    classifier plateaus near 90% instead of a trivial 100%.
    """
    count = len(targets)
    num_classes = len(prototypes)
    offset = torch.randint(1, num_classes, (count,), generator=generator)
    other = (targets + offset) % num_classes
    scale = torch.empty(count, 1, 1).uniform_(0.55, 1.0, generator=generator)
    mix = torch.empty(count, 1, 1).uniform_(0.0, 0.8, generator=generator)
    noise = torch.randn(count, 28, 28, generator=generator) * 0.2
    images = scale * prototypes[targets] + mix * prototypes[other] + noise
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def load_fashion_mnist(train: bool = True, root: str | os.PathLike[str] | None = None,
                       download: bool | None = None) -> Dataset[Any]:
    """FashionMNIST (``ToTensor`` images) from ``root``, downloaded if allowed, else a
    :class:`SyntheticFashionMNIST` stand-in (announced once per process on stderr).

    ``download=None`` downloads unless ``TORCHDOCTOR_OFFLINE=1``. Use
    :func:`dataset_kind` to learn which one you got.
    """
    where = data_root(root)
    if has_fashion_mnist(where):
        return _torchvision_or_synthetic(where, train, download=False,
                                         failure="the files could not be read")
    refusal = _download_refusal(download)
    if refusal is not None:
        return _synthetic(where, train, refusal)
    return _torchvision_or_synthetic(where, train, download=True, failure="download failed")


def _torchvision_or_synthetic(root: Path, train: bool, *, download: bool,
                              failure: str) -> Dataset[Any]:
    """torchvision's set, or the synthetic one if reading/downloading raises anything
    (truncated files, no network, a mirror down: the run goes on, and says why)."""
    try:
        return _torchvision_set(root, train, download=download)
    except Exception as exc:  # torchvision, the files, the network: say why, go on
        return _synthetic(root, train, f"{failure}: {type(exc).__name__}: {exc}")


def _synthetic(root: Path, train: bool, reason: str) -> SyntheticFashionMNIST:
    _NOTICE.emit(root, reason)
    return SyntheticFashionMNIST(train=train)


def _download_refusal(download: bool | None) -> str | None:
    """Why no download is attempted, or None when it should be tried."""
    if download is False:
        return "download=False"
    if download is None and offline():
        return f"{OFFLINE_ENV}=1"
    if not _host_reachable(*DOWNLOAD_HOST):
        return f"offline: {DOWNLOAD_HOST[0]} unreachable"
    return None


@functools.lru_cache(maxsize=4)
def _host_reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds.

    Runs in a daemon thread so a hanging DNS lookup (which ignores socket timeouts)
    cannot hold the caller longer than ``timeout``. Cached: one probe per process.
    """
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name="torchdoctor-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def _torchvision_set(root: Path, train: bool, *, download: bool) -> Dataset[Any]:
    """torchvision's FashionMNIST; the only place torchvision is imported (slow)."""
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    return datasets.FashionMNIST(str(root), train=train, download=download,
                                 transform=ToTensor())


def dataset_kind(dataset: Any) -> DataKind:
    """``"fashion-mnist"`` or ``"synthetic"`` for a dataset from
    :func:`load_fashion_mnist` (or a ``Subset``/``DataLoader`` wrapping one).

    Raises ``TypeError`` for any other dataset.
    """
    inner = dataset
    while not isinstance(inner, SyntheticFashionMNIST) and hasattr(inner, "dataset"):
        inner = inner.dataset
    if isinstance(inner, SyntheticFashionMNIST):
        return SYNTHETIC
    if type(inner).__name__ == "FashionMNIST":  # torchvision's, without importing it
        return FASHION_MNIST
    raise TypeError(f"not a FashionMNIST dataset: {type(dataset).__name__}")


def reference_batch(batch_size: int = 64, root: str | os.PathLike[str] | None = None,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A deterministic training batch: ``(x (B, 1, 28, 28) float32, y (B,) long, kind)``.

    The same ``seed`` and data give the same batch; the global RNG is not used. The
    dataset is loaded once per root and process.
    """
    where = data_root(root).resolve()
    dataset = _cached_train_set(str(where), offline())
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(dataset), generator=generator)[:batch_size].tolist()
    images, labels = zip(*(dataset[i] for i in picks))
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), dataset_kind(dataset)


@functools.lru_cache(maxsize=8)
def _cached_train_set(root: str, offline_now: bool) -> Any:
    """The training set under ``root``. ``offline_now`` only keys the cache: a set
    loaded while offline must not be reused once downloads are allowed."""
    return load_fashion_mnist(train=True, root=root)
