"""Bug: noise for augmentation is drawn on the CPU and added to GPU images.

`torch.randn(images.shape)` makes a CPU tensor whatever device `images` is on. On a
CPU-only machine that is the same device and it trains; on a GPU `images + noise`
raises "Expected all tensors to be on the same device". torchdoctor finds it in script
mode with an emulated GPU (check device-mismatch); the fix, `torch.randn_like(images)`,
is in device_mismatch_noise_fixed.py.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_data(n=512):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 28, 28, generator=generator)
    labels = (images.mean(dim=(1, 2, 3)) * 20).long().clamp(0, 9)
    return TensorDataset(images, labels)


def main():
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = DataLoader(make_data(), batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(2):
        model.train()
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            noise = torch.randn(images.shape) * 0.05  # BUG: drawn on the CPU
            optimizer.zero_grad()
            loss = loss_fn(model(images + noise), labels)
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
