"""Fixed: numerics_binary.py with BCEWithLogitsLoss on the logits and an epsilon under
the square root. `torchdoctor check` finds nothing here.
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
            logits = model(images).squeeze(1)
            bce = nn.functional.binary_cross_entropy_with_logits(logits, y)
            calibration = torch.sqrt(((torch.sigmoid(logits) - y) ** 2).mean() + 1e-8)
            loss = bce + 0.1 * calibration
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
