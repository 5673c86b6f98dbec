"""The FashionMNIST lab, written as a user would: the PyTorch basics tutorial's
"Build the Neural Network" and "Optimizing Model Parameters" steps, end to end.

This is the healthy reference program: ``torchdoctor check examples/fashion_mnist_lab.py``
must report no findings on it.

    python examples/fashion_mnist_lab.py                   # the real run: 10 epochs
    python examples/fashion_mnist_lab.py --epochs 1 --limit-batches 20   # a quick one
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

# A user would write
#     datasets.FashionMNIST(root="data", train=True, download=True, transform=ToTensor())
# load_fashion_mnist does exactly that (root: --data, else $TORCHDOCTOR_DATA, else "data"),
# and falls back to a synthetic FashionMNIST-shaped set when offline.
from torchdoctor.reference.data import load_fashion_mnist


class NeuralNetwork(nn.Module):
    """784 -> 256 -> 256 -> 10 logits, with dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 256),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


def train_loop(dataloader: DataLoader, model: nn.Module, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, device: str) -> None:
    """One epoch of training."""
    size = len(dataloader.dataset)
    model.train()  # dropout on while training
    for batch, (X, y) in enumerate(dataloader):
        X, y = X.to(device), y.to(device)
        optimizer.zero_grad()  # gradients add up across backward() calls otherwise
        pred = model(X)
        loss = loss_fn(pred, y)
        loss.backward()
        optimizer.step()

        if batch % 100 == 0:
            current = (batch + 1) * len(X)
            print(f"loss: {loss.item():>7f}  [{current:>5d}/{size:>5d}]")


def test_loop(dataloader: DataLoader, model: nn.Module, loss_fn: nn.Module,
              device: str) -> tuple[float, float]:
    """Average loss and accuracy on the test set."""
    model.eval()  # dropout off while evaluating
    size, num_batches = 0, 0
    test_loss, correct = 0.0, 0.0
    with torch.no_grad():  # no graph needed to evaluate
        for X, y in dataloader:
            X, y = X.to(device), y.to(device)
            pred = model(X)
            test_loss += loss_fn(pred, y).item()
            correct += (pred.argmax(1) == y).type(torch.float).sum().item()
            size += len(y)
            num_batches += 1
    test_loss /= max(num_batches, 1)
    correct /= max(size, 1)
    print(f"Test Error: \n Accuracy: {(100 * correct):>0.1f}%, Avg loss: {test_loss:>8f} \n")
    return test_loss, correct


def limited(dataset: Dataset, batches: int | None, batch_size: int) -> Dataset:
    """The first ``batches`` batches' worth of ``dataset`` (all of it for None)."""
    if batches is None:
        return dataset
    return Subset(dataset, range(min(batches * batch_size, len(dataset))))


def save_and_reload(model: nn.Module, device: str) -> nn.Module:
    """Save the weights, then load them into a new model the safe way."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model_weights.pth"
        torch.save(model.state_dict(), path)
        reloaded = NeuralNetwork().to(device)
        reloaded.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    reloaded.eval()
    print(f"Saved and reloaded the weights ({path.name}).")
    return reloaded


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data", default=None, help="folder holding FashionMNIST/raw")
    parser.add_argument("--limit-batches", type=int, default=None,
                        help="use only this many batches of each set (quick runs)")
    parser.add_argument("--device", default=None, help="default: the accelerator, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = args.device or (torch.accelerator.current_accelerator().type
                             if torch.accelerator.is_available() else "cpu")
    print(f"Using {device} device")

    training_data = load_fashion_mnist(train=True, root=args.data)
    test_data = load_fashion_mnist(train=False, root=args.data)
    train_dataloader = DataLoader(limited(training_data, args.limit_batches, args.batch_size),
                                  batch_size=args.batch_size, shuffle=True)
    test_dataloader = DataLoader(limited(test_data, args.limit_batches, args.batch_size),
                                 batch_size=args.batch_size)

    model = NeuralNetwork().to(device)
    loss_fn = nn.CrossEntropyLoss()  # takes raw logits: no softmax in the model
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    for t in range(args.epochs):
        print(f"Epoch {t + 1}\n-------------------------------")
        train_loop(train_dataloader, model, loss_fn, optimizer, device)
        test_loop(test_dataloader, model, loss_fn, device)
    print("Done!")

    reloaded = save_and_reload(model, device)
    test_loop(test_dataloader, reloaded, loss_fn, device)


if __name__ == "__main__":
    main()
