"""Fixed version of device_mismatch_class_weights.py: the class weights move to `device` with the model."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# rarer classes weigh more
CLASS_WEIGHTS = torch.tensor([1.0, 1.0, 1.2, 1.0, 1.5, 1.0, 2.0, 1.0, 1.0, 1.3])


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
    loss_fn = nn.CrossEntropyLoss(weight=CLASS_WEIGHTS.to(device))
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
