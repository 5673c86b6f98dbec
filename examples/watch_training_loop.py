"""Watch your own training loop with torchdoctor.

Trains the reference FashionMNIST classifier twice on synthetic FashionMNIST-shaped data
(offline, a few seconds): once with a healthy loop, once with the same loop carrying
two bugs (``optimizer.zero_grad()`` forgotten, and one corrupted batch holding a NaN),
and prints what the watch says about each. The loop itself is unchanged: the watch
learns about steps from the optimizer and about forwards from the model.

    python examples/watch_training_loop.py [--steps 200]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

import torchdoctor
from torchdoctor.reference.data import SyntheticFashionMNIST
from torchdoctor.reference.trainer import FashionMNISTClassifier


def batches(steps: int, corrupt_at: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """``steps`` batches of 64; batch ``corrupt_at`` gets a NaN pixel."""
    data = SyntheticFashionMNIST(train=True, size=steps * 64)
    for index, (images, labels) in enumerate(DataLoader(data, batch_size=64)):
        if index == corrupt_at:
            images[0, 0, 14, 14] = float("nan")
        yield images, labels


def train(steps: int, *, buggy: bool) -> torchdoctor.Watch:
    """One run of the loop under ``torchdoctor.watch``; returns the watch."""
    torch.manual_seed(0)
    model = FashionMNISTClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    # policy="record": collect the findings quietly and print them at the end
    with torchdoctor.watch(model, optimizer, policy="record") as doc:
        for images, labels in batches(steps, corrupt_at=steps // 2 if buggy else None):
            if not buggy:
                optimizer.zero_grad()
            loss = doc.loss(loss_fn(model(images), labels))  # returns the loss unchanged
            loss.backward()
            optimizer.step()
    return doc


def main(argv: list[str] | None = None) -> None:
    """Run both loops and print their reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    args = parser.parse_args(argv)
    for buggy in (False, True):
        print(f"=== {'buggy' if buggy else 'healthy'} loop ===")
        print(train(args.steps, buggy=buggy).table())
        print()


if __name__ == "__main__":
    main()
