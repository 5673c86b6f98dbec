"""Fixed: the test loop calls `model.eval()` (and training calls `model.train()`).

The fixed version of eval_mode.py: `torchdoctor check` finds nothing wrong.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from torchdoctor.reference.data import load_fashion_mnist


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, 256), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(256, 10),
        )

    def forward(self, x):
        return self.layers(x)


def train_epoch(model, loader, loss_fn, optimizer):
    model.train()
    for images, labels in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()


def test(model, loader):
    model.eval()  # FIX: Dropout off while evaluating
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
    model = Net()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        train_epoch(model, train_loader, loss_fn, optimizer)
        print(f"epoch {epoch}: test accuracy {test(model, test_loader):.3f}")


if __name__ == "__main__":
    main()
