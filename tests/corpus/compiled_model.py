"""A model wrapped in torch.compile (2.x tutorials do this), trained as usual."""
import torch
import torch.nn as nn

torch.manual_seed(0)
x = torch.randn(128, 8)
y = x.sum(1, keepdim=True)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
compiled = torch.compile(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for i in range(0, 128, 16):
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(compiled(x[i:i + 16]), y[i:i + 16])
    loss.backward()
    optimizer.step()
