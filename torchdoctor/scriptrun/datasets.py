"""torchvision datasets a script asks for but this machine cannot download.

While a script runs, :class:`OfflineDatasets` wraps the constructors of torchvision's
common datasets (MNIST family, CIFAR-10/100, ImageFolder). Each construction tries, in
order:

1. the script's own ``root`` with ``download=False`` (the files are already there);
2. the same class under the data root (``--data``, else ``$TORCHDOCTOR_DATA``), where a
   torchvision layout such as ``ROOT/FashionMNIST/raw`` is found although the script
   says ``root="data"``;
3. torchvision's download, when ``download=True`` and ``TORCHDOCTOR_OFFLINE`` is unset;
4. a small synthetic stand-in of the right shape, type and class count: the dataset
   object is the script's own class with synthetic ``data``/``targets`` (or ``samples``
   for ImageFolder), so its ``__getitem__`` and transforms run as written. Each class
   has its own pattern (a learnable task, so a loss that does not fall still means
   something). The report's notes say so.

The wrappers are class attributes installed by ``__enter__`` and removed by
``__exit__``; nothing stays patched after the run. torchvision is only touched when the
script's source mentions it (importing it costs seconds).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from torchdoctor.scriptrun.observations import ScriptRun

#: stand-in sizes: enough batches for the fast-dev-run budget, small enough to build fast
TRAIN_SIZE = 1024
TEST_SIZE = 256


@dataclass(frozen=True)
class _Kind:
    """What a dataset class holds: image shape (H, W, C; C=0 for grayscale 2-D) and
    class count, and how its items are stored."""

    height: int
    width: int
    channels: int
    classes: int
    storage: str  # "mnist" (uint8 tensor), "cifar" (uint8 HWC numpy, list targets), "folder"


_KINDS: dict[str, _Kind] = {
    "MNIST": _Kind(28, 28, 0, 10, "mnist"),
    "FashionMNIST": _Kind(28, 28, 0, 10, "mnist"),
    "KMNIST": _Kind(28, 28, 0, 10, "mnist"),
    "CIFAR10": _Kind(32, 32, 3, 10, "cifar"),
    "CIFAR100": _Kind(32, 32, 3, 100, "cifar"),
    "ImageFolder": _Kind(64, 64, 3, 2, "folder"),
}


class OfflineDatasets:
    """Context manager: torchvision datasets fall back to real files elsewhere or to a
    synthetic stand-in while active (see the module docstring)."""

    def __init__(self, source: str, data_root: str | None, run: ScriptRun) -> None:
        self._wanted = "torchvision" in source
        self._data_root = data_root or os.environ.get("TORCHDOCTOR_DATA") or None
        self._run = run
        self._patches: list[tuple[type, Callable[..., None]]] = []

    def __enter__(self) -> OfflineDatasets:
        if not self._wanted:
            return self
        try:
            import torchvision.datasets as tv_datasets
        except ImportError:  # the script will say so itself
            return self
        # FashionMNIST/KMNIST share MNIST's __init__, CIFAR100 CIFAR10's: patch the
        # class that defines it, once, and pick the layout by the instance's class
        for name in _KINDS:
            cls = getattr(tv_datasets, name, None)
            if isinstance(cls, type) and "__init__" in cls.__dict__:
                original = cls.__dict__["__init__"]
                self._patches.append((cls, original))
                cls.__init__ = self._wrap(original)  # type: ignore[misc]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for cls, original in reversed(self._patches):
            cls.__init__ = original  # type: ignore[misc]
        self._patches.clear()

    def _wrap(self, original: Callable[..., None]) -> Callable[..., None]:
        patcher = self

        @functools.wraps(original)
        def init(dataset: Any, root: Any = "data", *args: Any, **kwargs: Any) -> None:
            kind = _KINDS.get(type(dataset).__name__)
            if kind is None or type(dataset).__module__.split(".")[0] != "torchvision":
                original(dataset, root, *args, **kwargs)  # a class of the user's own
                return
            patcher._construct(dataset, original, kind, root, args, kwargs)

        return init

    def _construct(self, dataset: Any, original: Callable[..., None], kind: _Kind,
                   root: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        download = bool(kwargs.pop("download", False))
        name = type(dataset).__name__
        roots = [root] + ([self._data_root] if self._data_root and kind.storage != "folder"
                          else [])
        for candidate in roots:
            try:
                original(dataset, candidate, *args, **_no_download(kwargs, kind))
            except (RuntimeError, FileNotFoundError, OSError):
                continue
            if candidate is not root:
                self._note(f"{name}(root={str(root)!r}) read the real files under the data "
                           f"root {candidate}")
            return
        if download and not _offline():
            try:
                original(dataset, root, *args, download=True, **kwargs)
                return
            except Exception:  # any download failure means: no network
                pass
        given = _arguments(original, dataset, root, args, kwargs)
        _fill_synthetic(dataset, kind, root, _is_train(given), given)
        shape = f"{kind.channels or 1}x{kind.height}x{kind.width}"
        self._note(f"{name}(root={str(root)!r}) is not on this machine and cannot be "
                   f"downloaded: the script ran on a synthetic learnable stand-in "
                   f"({kind.classes} classes, {shape} images), so its accuracy figures are "
                   "not the real ones; put the real files under --data or "
                   "$TORCHDOCTOR_DATA to use them")

    def _note(self, text: str) -> None:
        if text not in self._run.notes:
            self._run.notes.append(text)


def _no_download(kwargs: dict[str, Any], kind: _Kind) -> dict[str, Any]:
    return kwargs if kind.storage == "folder" else {**kwargs, "download": False}


def _offline() -> bool:
    return os.environ.get("TORCHDOCTOR_OFFLINE", "") not in ("", "0")


def _arguments(original: Callable[..., None], dataset: Any, root: Any, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> dict[str, Any]:
    """The constructor's arguments by name (``ImageFolder(root, transform)`` passes the
    transform by position), defaults included."""
    try:
        bound = inspect.signature(original).bind(dataset, root, *args, **kwargs)
    except TypeError:
        return dict(kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _is_train(given: dict[str, Any]) -> bool:
    return bool(given.get("train", True))


def _fill_synthetic(dataset: Any, kind: _Kind, root: Any, train: bool,
                    kwargs: dict[str, Any]) -> None:
    """Give ``dataset`` (whose own ``__init__`` failed) synthetic items in its class's
    storage layout, plus the attributes its ``__getitem__`` reads."""
    count = TRAIN_SIZE if train else TEST_SIZE
    images, targets = synthetic_images(kind, count, seed=0 if train else 1)
    dataset.root = str(root)
    dataset.transform = kwargs.get("transform")
    dataset.target_transform = kwargs.get("target_transform")
    dataset.transforms = None
    dataset.train = train
    if kind.storage != "mnist":  # MNIST's classes are class attributes (read-only)
        dataset.classes = [str(i) for i in range(kind.classes)]
        dataset.class_to_idx = {c: i for i, c in enumerate(dataset.classes)}
    if kind.storage == "mnist":
        dataset.data = images
        dataset.targets = targets
    elif kind.storage == "cifar":
        dataset.data = images.numpy()
        dataset.targets = targets.tolist()
    else:
        _fill_folder(dataset, images, targets, kwargs)


def _fill_folder(dataset: Any, images: torch.Tensor, targets: torch.Tensor,
                 kwargs: dict[str, Any]) -> None:
    from PIL import Image

    pictures = {f"<synthetic {i}>": images[i].numpy() for i in range(len(images))}
    dataset.samples = [(path, int(t)) for path, t in zip(pictures, targets)]
    dataset.imgs = dataset.samples
    dataset.targets = [t for _, t in dataset.samples]
    dataset.extensions = None
    dataset.loader = lambda path: Image.fromarray(pictures[path], mode="RGB")


def synthetic_images(kind: _Kind, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` uint8 images (N, H, W) or (N, H, W, C) and int64 labels: a fixed random
    pattern per class plus noise, so the classes can be told apart (learnable)."""
    generator = torch.Generator().manual_seed(1234)
    shape = (kind.height, kind.width) + ((kind.channels,) if kind.channels else ())
    prototypes = torch.rand((kind.classes, *shape), generator=generator) * 200
    generator.manual_seed(seed)
    targets = torch.randint(0, kind.classes, (count,), generator=generator)
    noise = torch.rand((count, *shape), generator=generator) * 55
    images = (prototypes[targets] + noise).clamp(0, 255).to(torch.uint8)
    return images, targets
