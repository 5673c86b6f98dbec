"""A ten-epoch training program with every phase a real one has: train, validate after
each epoch, save a checkpoint, reload it into a fresh model, test it, predict one sample.

`torchdoctor check examples/ten_epochs_phases.py` runs it to its end within the default
budget and lists the phases it saw; its checkpoint goes to the check's scratch overlay.
Run as a plain program it writes the checkpoint (``--checkpoint``, default
``ten_epochs_phases.pth``) into the current directory.

    python examples/ten_epochs_phases.py --epochs 10
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split

CLASSES = 4
FEATURES = 20


def make_data(samples: int = 2000, seed: int = 0) -> TensorDataset:
    """A learnable classification task: the class is the arg-max of a fixed projection."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, FEATURES, generator=generator)
    projection = torch.randn(FEATURES, CLASSES, generator=generator)
    return TensorDataset(inputs, (inputs @ projection).argmax(dim=1))


class Classifier(nn.Module):
    """A small MLP with batch norm and dropout, so train/eval mode matters."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(FEATURES, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                    nn.Dropout(0.1), nn.Linear(64, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def train_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module,
                optimizer: torch.optim.Optimizer) -> float:
    """One pass over ``loader`` in training mode; the mean batch loss."""
    model.train()
    total, batches = 0.0, 0
    for inputs, targets in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        total, batches = total + loss.item(), batches + 1
    return total / max(batches, 1)


def evaluate(model: nn.Module, loader: DataLoader, loss_fn: nn.Module) -> tuple[float, float]:
    """Mean loss per sample and accuracy over ``loader``, in eval mode, without gradients."""
    model.eval()
    loss, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for inputs, targets in loader:
            output = model(inputs)
            loss += loss_fn(output, targets).item() * len(targets)
            correct += int((output.argmax(dim=1) == targets).sum())
            seen += len(targets)
    return loss / max(seen, 1), correct / max(seen, 1)


def predict(model: nn.Module, sample: torch.Tensor) -> int:
    """The class of one sample (a batch of one, in eval mode)."""
    model.eval()
    with torch.no_grad():
        return int(model(sample.unsqueeze(0)).argmax(dim=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--checkpoint", default="ten_epochs_phases.pth")
    args = parser.parse_args()

    torch.manual_seed(0)
    train_set, val_set, test_set = random_split(
        make_data(), [1400, 300, 300], generator=torch.Generator().manual_seed(1))
    test_data: Dataset = test_set
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=100)
    test_loader = DataLoader(test_data, batch_size=100)

    model = Classifier()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, args.epochs + 1):
        train_loss = train_epoch(model, train_loader, loss_fn, optimizer)
        val_loss, val_accuracy = evaluate(model, val_loader, loss_fn)
        print(f"epoch {epoch}: train loss {train_loss:.3f}, validation loss {val_loss:.3f}, "
              f"accuracy {val_accuracy:.1%}")

    torch.save(model.state_dict(), args.checkpoint)
    restored = Classifier()
    restored.load_state_dict(torch.load(args.checkpoint, weights_only=True))
    test_loss, test_accuracy = evaluate(restored, test_loader, loss_fn)
    print(f"test loss {test_loss:.3f}, accuracy {test_accuracy:.1%}")

    sample, label = test_set[0]
    print(f"predicted class {predict(restored, sample)} for a sample of class {int(label)}")


if __name__ == "__main__":
    main()
