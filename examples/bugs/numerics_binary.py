"""Bug: a binary FashionMNIST classifier (bag or not) with a hand-written binary
cross-entropy on sigmoid probabilities, and an RMSE-style metric loss term.

It trains now; once the model is confident, sigmoid rounds to exactly 0 or 1 and a log
returns -inf; and the square root's gradient is inf when the error reaches 0.
`torchdoctor check examples/bugs/numerics_binary.py` reports both (check numerics);
the fix is in numerics_binary_fixed.py.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from torchdoctor.reference.data import load_fashion_mnist

BAG = 8


def main():
    torch.manual_seed(0)
    train_set = Subset(load_fashion_mnist(train=True, download=False), range(1024))
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(2):
        for images, labels in loader:
            y = (labels == BAG).float()
            optimizer.zero_grad()
            p = torch.sigmoid(model(images).squeeze(1))
            bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()  # BUG: by hand
            calibration = torch.sqrt(((p - y) ** 2).mean())  # BUG: inf gradient at 0
            loss = bce + 0.1 * calibration
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
