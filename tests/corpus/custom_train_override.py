"""A layer-wise model whose nn.Module.train() is overridden by a training routine, and a
model switched with model.train(False) instead of eval(); a mask tensor created on the
device as a plain attribute."""
import torch
import torch.nn as nn
import torch.nn.functional as F

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LayerwiseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 16)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(16, 3)
        self.mask = torch.ones(16, device=device)  # created where the model will live

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(x))) * self.mask)

    def train(self, data, epochs=2):  # noqa: the routine, not nn.Module.train(mode)
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        x, y = data
        for _ in range(epochs):
            for i in range(0, len(x), 32):
                optimizer.zero_grad()
                F.cross_entropy(self(x[i:i + 32]), y[i:i + 32]).backward()
                optimizer.step()


torch.manual_seed(0)
x = torch.randn(128, 10, device=device)
y = x[:, :3].argmax(1)
net = LayerwiseNet().to(device)
net.train((x, y))
nn.Module.train(net, False)  # the overridden train() is the routine
with torch.no_grad():
    accuracy = (net(x).argmax(1) == y).float().mean()
