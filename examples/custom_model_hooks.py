"""A model that is not a FashionMNIST classifier, adapted to torchdoctor with hook functions.

The model predicts a house-price-like number from 8 features (regression, MSE loss).
torchdoctor's checks train copies of a model on one batch; by default that is a
FashionMNIST batch with CrossEntropyLoss and Adam, which means nothing here. Defining
these plain functions in the file (no decorator or import needed, like fixtures in a
conftest.py) tells the checks how to build, feed and train this model:

    torchdoctor_model()             a NEW model instance each call
    torchdoctor_batch()             one training batch as (inputs, targets); the model
                                    is called as model(inputs) (a tuple is unpacked)
    torchdoctor_loss()              the loss, called as loss_fn(model(inputs), targets)
    torchdoctor_optimizer(params)   an optimizer over params

Any hook left out falls back to the reference one.

    torchdoctor check examples/custom_model_hooks.py
    python examples/custom_model_hooks.py --epochs 20
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_FEATURES = 8
BATCH_SIZE = 32


class PriceRegressor(nn.Module):
    """8 features -> 64 -> 64 -> 1 predicted value."""

    def __init__(self, num_features: int = NUM_FEATURES) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_features, 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised features (count, 8) and targets (count, 1): a smooth nonlinear
    function of the features plus a little noise. A private generator keeps the
    global RNG untouched."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(count, NUM_FEATURES, generator=generator)
    weights = torch.linspace(-1.0, 1.0, NUM_FEATURES)
    signal = features @ weights + 0.5 * torch.sin(2 * features[:, 0]) * features[:, 1]
    noise = 0.05 * torch.randn(count, generator=generator)
    # targets shaped (count, 1) like the model's output, so MSELoss does not broadcast
    return features, (signal + noise).unsqueeze(1)


# ---- torchdoctor hooks -------------------------------------------------------------


def torchdoctor_model() -> nn.Module:
    """A fresh, untrained model (the checks build several copies)."""
    return PriceRegressor()


def torchdoctor_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of the training data, the same every call."""
    return make_data(BATCH_SIZE, seed=0)


def torchdoctor_loss() -> nn.Module:
    """Mean squared error between the (B, 1) predictions and (B, 1) targets."""
    return nn.MSELoss()


def torchdoctor_optimizer(params: object) -> torch.optim.Optimizer:
    """The optimizer the training loop below uses."""
    return torch.optim.Adam(params, lr=1e-2)  # type: ignore[arg-type]


# ---- the user's own training program -----------------------------------------------


def train_epoch(loader: DataLoader, model: nn.Module, loss_fn: nn.Module,
                optimizer: torch.optim.Optimizer) -> float:
    """One pass over the training data; the mean batch loss."""
    model.train()
    total = 0.0
    for features, targets in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(features), targets)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / max(len(loader), 1)


def evaluate(loader: DataLoader, model: nn.Module, loss_fn: nn.Module) -> float:
    """Mean loss on held-out data, in eval mode without autograd."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for features, targets in loader:
            total += loss_fn(model(features), targets).item()
    return total / max(len(loader), 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the price regressor.")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=2048)
    args = parser.parse_args(argv)

    train_loader = DataLoader(TensorDataset(*make_data(args.samples, seed=1)),
                              batch_size=BATCH_SIZE, shuffle=True)
    test_loader = DataLoader(TensorDataset(*make_data(args.samples // 4, seed=2)),
                             batch_size=BATCH_SIZE)
    model = torchdoctor_model()
    loss_fn = torchdoctor_loss()
    optimizer = torchdoctor_optimizer(model.parameters())
    for epoch in range(1, args.epochs + 1):
        train_loss = train_epoch(train_loader, model, loss_fn, optimizer)
        test_loss = evaluate(test_loader, model, loss_fn)
        print(f"epoch {epoch:3d}  train mse {train_loss:.4f}  test mse {test_loss:.4f}")


if __name__ == "__main__":
    main()
