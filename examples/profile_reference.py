"""Where does the time of a training step go? Three ways to ask torchdoctor.

1. the bundled FashionMNIST trainer (``torchdoctor profile`` does the same);
2. your own loop, phases marked by hand with ``profile_steps``;
3. a deliberately slow Dataset through ``profile_loop``, to see the data-loading advice.

    python examples/profile_reference.py                      # offline, CPU, a few seconds
    python examples/profile_reference.py --trace trace.json   # and a Chrome trace of part 2
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchdoctor.profiling import profile_loop, profile_reference, profile_steps


class SlowDataset(Dataset[tuple[torch.Tensor, int]]):
    """Each sample takes 10 ms to "decode", as a large image read from disk might."""

    def __len__(self) -> int:
        return 256

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        time.sleep(0.01)
        return torch.rand(1, 28, 28), index % 10


def reference(steps: int) -> None:
    """Part 1: the reference trainer (synthetic data when FashionMNIST is absent)."""
    print(profile_reference(steps=steps, batch_size=64).table())


def own_loop(steps: int, trace: str | None) -> None:
    """Part 2: a hand-written loop with its phases marked."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))) for _ in range(4)]
    with profile_steps(target="my loop", trace=trace) as prof:
        for inputs, targets in prof.batches(batches * 3, steps=steps):
            with prof.phase("forward"):
                loss = nn.functional.cross_entropy(model(inputs), targets)
            with prof.phase("backward"):
                loss.backward()
            with prof.phase("step"):
                optimizer.step()
                optimizer.zero_grad()
    print(prof.report().table())


def slow_data(steps: int) -> None:
    """Part 3: a data-bound loop; profile_loop splits the phases by itself."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def train_step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        inputs, targets = batch
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()

    loader = DataLoader(SlowDataset(), batch_size=16)
    print(profile_loop(train_step, loader, steps=steps, target="slow dataset").table())


def main() -> None:
    """Run the three parts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--trace", help="write a Chrome trace of part 2 here")
    args = parser.parse_args()
    os.environ.setdefault("TORCHDOCTOR_OFFLINE", "1")  # never wait on a download here
    for part in (lambda: reference(args.steps), lambda: own_loop(args.steps, args.trace),
                 lambda: slow_data(args.steps)):
        part()
        print()


if __name__ == "__main__":
    main()
