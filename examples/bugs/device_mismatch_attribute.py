"""Bug: a mask kept as a plain tensor attribute, which `model.to(device)` does not move.

`self.mask = torch.ones(...)` in `__init__` is neither a parameter nor a buffer, so
`model.to(device)` leaves it on the CPU (and `state_dict()` does not save it). On a GPU,
`x * self.mask` raises "Expected all tensors to be on the same device"; on a CPU-only
machine it trains. torchdoctor finds it in script mode with an emulated GPU (check
device-mismatch); the fix, `self.register_buffer("mask", ...)`, is in
device_mismatch_attribute_fixed.py.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class MaskedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        mask = torch.ones(784)
        mask[:28] = 0.0  # ignore the top row of pixels
        self.mask = mask  # BUG: a plain attribute, not a buffer
        self.layers = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.layers(self.flatten(x) * self.mask)


def make_data(n=512):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 28, 28, generator=generator)
    labels = (images.mean(dim=(1, 2, 3)) * 20).long().clamp(0, 9)
    return TensorDataset(images, labels)


def main():
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = DataLoader(make_data(), batch_size=64, shuffle=True)
    model = MaskedMLP().to(device)
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
