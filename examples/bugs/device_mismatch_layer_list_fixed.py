"""Fixed version of device_mismatch_layer_list.py: the hidden layers live in an `nn.ModuleList`."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DeepMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.inp = nn.Linear(784, 64)
        self.hidden = nn.ModuleList([nn.Linear(64, 64) for _ in range(2)])
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.inp(self.flatten(x)))
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x)


def make_data(n=512):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 28, 28, generator=generator)
    labels = (images.mean(dim=(1, 2, 3)) * 20).long().clamp(0, 9)
    return TensorDataset(images, labels)


def main():
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = DataLoader(make_data(), batch_size=64, shuffle=True)
    model = DeepMLP().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(2):
        model.train()
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
