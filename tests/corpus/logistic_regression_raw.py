"""Logistic regression on raw tensors with torch.optim.SGD over [w, b] and a
hand-written binary cross-entropy; no nn.Module anywhere."""
import torch

torch.manual_seed(0)
x = torch.randn(200, 2)
y = (x[:, 0] + x[:, 1] > 0).float()
w = torch.randn(2, requires_grad=True)
b = torch.zeros(1, requires_grad=True)
optimizer = torch.optim.SGD([w, b], lr=5.0)
for step in range(40):
    p = torch.sigmoid(x @ w + b)
    loss = -(y * torch.log(p + 1e-7) + (1 - y) * torch.log(1 - p + 1e-7)).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
accuracy = ((torch.sigmoid(x @ w + b) > 0.5).float() == y).float().mean()
