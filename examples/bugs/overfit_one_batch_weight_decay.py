"""Bug: weight_decay=1e3 (meant 1e-3) with AdamW: each step multiplies every weight by
1 - lr x weight_decay = 0, so the model outputs the same thing for every image and the
loss stays at chance level, ln(10).

The script runs without an error. ``torchdoctor check
examples/bugs/overfit_one_batch_weight_decay.py`` trains copies with the script's own
setup (this AdamW, this loss, a batch the script fed the model) and reports that they
cannot learn one batch, and why (check overfit-one-batch). The reference Adam 1e-3 has
no weight decay and would have fitted it. The fix is in
overfit_one_batch_weight_decay_fixed.py.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from torchdoctor.reference.data import load_fashion_mnist


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 256), nn.ReLU(),
            nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def train_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module,
                optimizer: torch.optim.Optimizer) -> float:
    model.train()
    total = 0.0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / len(loader)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = 0
    for images, labels in loader:
        correct += (model(images).argmax(dim=1) == labels).sum().item()
    return correct / len(loader.dataset)


def main(epochs: int = 2) -> None:
    torch.manual_seed(0)
    # a small slice keeps a plain run short
    train_set = Subset(load_fashion_mnist(train=True), range(1024))
    test_set = Subset(load_fashion_mnist(train=False), range(256))
    train = DataLoader(train_set, batch_size=64, shuffle=True)
    test = DataLoader(test_set, batch_size=64)
    model = Classifier()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e3)  # BUG: meant 1e-3
    for epoch in range(epochs):
        loss = train_epoch(model, train, loss_fn, optimizer)
        print(f"epoch {epoch + 1}: loss {loss:.4f}, test accuracy {evaluate(model, test):.3f}")


if __name__ == "__main__":
    main()
