"""Small models shared by the tests, so that each test file does not carry its own copy.

A test that needs a model with a particular fault (a plain tensor attribute, a log of a
softmax...) still defines it beside the test: the fault is what the test is about. The
models here are the healthy, ordinary ones the faults are built around.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_FEATURES = 28 * 28  # a flattened FashionMNIST image


class ImageMLP(nn.Module):
    """The FashionMNIST MLP: ``flatten`` -> ``fc1`` (784 -> hidden) -> ``relu`` -> ``fc2``.

    ``flatten=False`` is the classic bug: (N, 1, 28, 28) images reach ``fc1`` unflattened.
    """

    def __init__(self, hidden: int = 64, classes: int = 10, flatten: bool = True) -> None:
        super().__init__()
        self.flatten = nn.Flatten() if flatten else nn.Identity()
        self.fc1 = nn.Linear(IMAGE_FEATURES, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


def image_mlp(hidden: int = 32, *tail: nn.Module, flatten: bool = True) -> nn.Sequential:
    """:class:`ImageMLP` as an ``nn.Sequential`` (children named by index: ``0`` Flatten,
    ``1`` Linear, ``2`` ReLU, ``3`` Linear, then ``tail`` from ``4``; without ``flatten``
    every index is one lower)."""
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    return nn.Sequential(*layers, nn.Linear(IMAGE_FEATURES, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10), *tail)


class TabularNet(nn.Module):
    """A small classifier of 8 features into 4 classes: ``fc1`` -> ReLU -> ``drop`` ->
    ``fc2``. Dropout makes it mode-sensitive; ``unused=True`` adds a layer that forward
    never calls."""

    def __init__(self, unused: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(16, 4)
        self.unused = nn.Linear(4, 4) if unused else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def tabular_mlp(features: int = 20, hidden: int = 32, classes: int = 4) -> nn.Sequential:
    """A two-layer MLP for random tabular batches of ``features`` columns."""
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class Noisy(nn.Module):
    """Adds noise whatever the mode: randomness in a module's own forward that ``eval()``
    cannot switch off (unlike ``nn.Dropout``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


class PythonRandom(nn.Module):
    """Random by design, in both modes, with Python's ``random`` (as pytorch/tutorials
    dynamic_net picks its depth with ``random.randint``); a random scale rather than a
    random depth, so that two calls always differ."""

    def __init__(self, features: int = 20, classes: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import random

        return self.fc(x) * random.uniform(0.5, 1.5)


class FunctionalDropout(nn.Module):
    """Tabular (20 features, 4 classes) with ``F.dropout`` called without
    ``training=self.training``: still random after ``eval()``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.dropout(self.fc1(x), 0.5))  # bug: no training=


def functional_dropout_line() -> str:
    """``path:line`` of the dropout call in :class:`FunctionalDropout`'s forward."""
    import inspect

    source, first = inspect.getsourcelines(FunctionalDropout.forward)
    offset = next(i for i, code in enumerate(source) if "dropout(" in code)
    return f"models.py:{first + offset}"
