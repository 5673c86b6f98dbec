"""Bug: the images reach the first Linear layer unflattened.

There is no nn.Flatten() in front of fc1, so nn.Linear(784, 256) is fed (64, 1, 28, 28)
images and torch raises "mat1 and mat2 shapes cannot be multiplied (1792x28 and
784x256)". `torchdoctor check examples/bugs/shape_mismatch.py` names fc1, what it expects
and what it got (check shape-mismatch); the fix is in shape_mismatch_fixed.py.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from torchdoctor.reference.data import load_fashion_mnist


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = torch.relu(self.fc1(x))  # BUG: x is still (batch, 1, 28, 28)
        return self.fc2(x)


def train_epoch(model, loader, loss_fn, optimizer):
    model.train()
    for images, labels in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()


def test(model, loader):
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (model(images).argmax(dim=1) == labels).sum().item()
    return correct / len(loader.dataset)


def main():
    torch.manual_seed(0)
    train_set = Subset(load_fashion_mnist(train=True, download=False), range(1024))
    test_set = Subset(load_fashion_mnist(train=False, download=False), range(256))
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=64)
    model = MLP()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        train_epoch(model, train_loader, loss_fn, optimizer)
        print(f"epoch {epoch}: test accuracy {test(model, test_loader):.3f}")


if __name__ == "__main__":
    main()
