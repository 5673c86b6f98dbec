"""Fixed version of device_mismatch.py: the bias feature is created on the input's device.

`torch.ones(x.shape[0], 1, device=x.device)` follows x to whatever device the model and
batch were moved to, so the program runs on a GPU as it does on the CPU.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from torchdoctor.reference.data import load_fashion_mnist


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(28 * 28, 256)
        self.fc2 = nn.Linear(256 + 1, 10)

    def forward(self, x):
        features = torch.relu(self.fc1(self.flatten(x)))
        ones = torch.ones(x.shape[0], 1, device=x.device)
        return self.fc2(torch.cat([features, ones], dim=1))


def train_epoch(model, loader, loss_fn, optimizer, device):
    model.train()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()


def test(model, loader, device):
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            correct += (model(images).argmax(dim=1) == labels).sum().item()
    return correct / len(loader.dataset)


def main():
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_set = Subset(load_fashion_mnist(train=True, download=False), range(1024))
    test_set = Subset(load_fashion_mnist(train=False, download=False), range(256))
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=64)
    model = MLP().to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        train_epoch(model, train_loader, loss_fn, optimizer, device)
        print(f"epoch {epoch}: test accuracy {test(model, test_loader, device):.3f}")


if __name__ == "__main__":
    main()
