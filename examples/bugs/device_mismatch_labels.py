"""Bug: the labels of each batch are never moved to the GPU.

The loop moves the images with `.to(device)` but computes the loss with the labels as
the DataLoader made them, on the CPU. On a CPU-only machine `device` is "cpu" and it
trains; on a GPU `F.cross_entropy` raises "Expected all tensors to be on the same
device". `torchdoctor check examples/bugs/device_mismatch_labels.py` runs the script with
an emulated GPU and finds it at the loss line (check device-mismatch); the fix is in
device_mismatch_labels_fixed.py.
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
            images = images.to(device)  # BUG: labels stay on the CPU
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
