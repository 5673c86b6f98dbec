"""The GPU training script as people write it to run anywhere: the device picked once
with torch.cuda.is_available(), a pinned-memory DataLoader and non_blocking copies,
autocast("cuda") with a GradScaler, the cuDNN benchmark flag, a seeded CUDA generator,
and a checkpoint saved and loaded back with map_location. Everything it uses is on the
device it chose (healthy on a GPU; torchdoctor runs it with an emulated one)."""
import os
import tempfile

import torch
import torch.nn as nn


def evaluate(model, loader, device):
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            correct += (model(xb).argmax(1) == yb).sum().item()
            seen += yb.numel()
    return correct / seen


def main():
    torch.manual_seed(0)
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.manual_seed_all(0)
        torch.backends.cudnn.benchmark = True
        print("training on", torch.cuda.get_device_name(0))
    x = torch.randn(512, 20)
    y = (x[:, :5].sum(1) > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, pin_memory=use_cuda)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(2):
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=use_cuda):
                loss = criterion(model(xb), yb)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if use_cuda:
            torch.cuda.synchronize()
        print(f"epoch {epoch}: accuracy {evaluate(model, loader, device):.3f}")
    path = os.path.join(tempfile.mkdtemp(), "checkpoint.pt")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    restored = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2)).to(device)
    restored.load_state_dict(checkpoint["model"])
    print(f"restored: accuracy {evaluate(restored, loader, device):.3f}")


if __name__ == "__main__":
    main()
