"""The autograd chapter's linear regression: raw tensors with requires_grad, a
hand-written loss, `w -= lr * w.grad` under no_grad, then w.grad.zero_()."""
import torch

torch.manual_seed(0)
x = torch.randn(100, 3)
y = x @ torch.tensor([2.0, -3.4, 1.0]) + 4.2
w = torch.zeros(3, requires_grad=True)
b = torch.zeros(1, requires_grad=True)
lr = 0.1
for epoch in range(30):
    loss = ((x @ w + b - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w -= lr * w.grad
        b -= lr * b.grad
        w.grad.zero_()
        b.grad.zero_()
print(float(loss))
