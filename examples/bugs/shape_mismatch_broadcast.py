"""Bug: a hand-written loss and accuracy that broadcast prediction against target.

The model predicts one number per image, (64, 1); the targets are (64,). So
`prediction - target` is a (64, 64) matrix: the "MSE" averages every prediction against
every target (the model only learns the mean) and the accuracy compares every pair (it
can exceed 1). torch raises nothing. `torchdoctor check
examples/bugs/shape_mismatch_broadcast.py` shows the shapes and the fix (check
shape-mismatch); the fix is in shape_mismatch_broadcast_fixed.py.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from torchdoctor.reference.data import load_fashion_mnist


def main():
    torch.manual_seed(0)
    train_set = Subset(load_fashion_mnist(train=True, download=False), range(1024))
    test_set = Subset(load_fashion_mnist(train=False, download=False), range(256))
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=64)
    # a regressor of the class index (a toy, to show the shapes)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            prediction = model(images)
            loss = ((prediction - labels.float()) ** 2).mean()  # BUG: (64, 1) - (64,)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in test_loader:
                prediction = model(images)
                correct += (prediction.round() == labels).sum().item()  # BUG: same shapes
        print(f"epoch {epoch}: accuracy {correct / len(test_set):.3f}")


if __name__ == "__main__":
    main()
