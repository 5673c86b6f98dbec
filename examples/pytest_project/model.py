"""A small FashionMNIST classifier and its training step: the code under test.

``python model.py`` trains it for two short epochs on random stand-in data; that run is
what ``pytest --torchdoctor model.py`` (or the ``torchdoctor_targets`` ini setting in
this project's pytest.ini) diagnoses, one test item per check.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

Batch = tuple[torch.Tensor, torch.Tensor]


class TinyClassifier(nn.Module):
    """Images (B, 1, 28, 28) -> logits (B, 10)."""

    def __init__(self, hidden: int = 64, num_classes: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
               loss_fn: Callable[..., torch.Tensor] = F.cross_entropy) -> float:
    """One step: zero the gradients, forward, loss, backward, update. Returns the loss."""
    images, labels = batch
    optimizer.zero_grad()
    loss = loss_fn(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Accuracy in eval mode (dropout off)."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += int((model(images).argmax(dim=1) == labels).sum())
        total += len(labels)
    return correct / total


def main() -> None:
    """Two short epochs on random stand-in data (the example is about the tests)."""
    torch.manual_seed(0)
    images, labels = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True)
    model = TinyClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        model.train()
        losses = [train_step(model, optimizer, batch) for batch in loader]
        print(f"epoch {epoch}: loss {sum(losses) / len(losses):.3f}, "
              f"accuracy {accuracy(model, loader):.2f}")


if __name__ == "__main__":
    main()
