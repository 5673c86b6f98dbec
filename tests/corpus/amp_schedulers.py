"""AMP and schedulers as people combine them: autocast (bfloat16 on the CPU), GradScaler
(enabled only on CUDA), unscale_ + clip_grad_norm_, OneCycleLR stepped per batch,
ReduceLROnPlateau per epoch, DataLoader with two worker processes."""
import torch
import torch.nn as nn


def main():
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    y = x[:, :4].argmax(1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32,
                                         shuffle=True, num_workers=2)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=100)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD(model.parameters(), lr=0.1))
    scaler = torch.amp.GradScaler("cuda", enabled=torch.cuda.is_available())
    criterion = nn.CrossEntropyLoss()
    for epoch in range(2):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = criterion(model(xb), yb)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            val = sum(criterion(model(xb), yb).item() for xb, yb in loader)
        plateau.step(val)


if __name__ == "__main__":
    main()
