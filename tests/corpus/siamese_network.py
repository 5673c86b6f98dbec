"""pytorch/examples siamese_network shape: one tower applied to two inputs, features
concatenated, BCELoss on a sigmoid, StepLR; pairs built by a Dataset."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import StepLR


class SiameseNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                   nn.Flatten(), nn.Linear(128, 16))
        self.fc = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))
        self.sigmoid = nn.Sigmoid()

    def forward(self, a, b):
        out = torch.cat((self.tower(a), self.tower(b)), 1)
        return self.sigmoid(self.fc(out))


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, n=256):
        g = torch.Generator().manual_seed(0)
        self.protos = torch.rand(4, 1, 12, 12, generator=g)
        self.labels = torch.randint(0, 4, (n, 2), generator=g)
        self.noise = torch.rand(n, 2, 1, 12, 12, generator=g) * 0.3

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        a, b = self.labels[i]
        same = torch.tensor(float(a == b))
        return self.protos[a] + self.noise[i, 0], self.protos[b] + self.noise[i, 1], same


loader = torch.utils.data.DataLoader(PairDataset(), batch_size=32, shuffle=True)
model = SiameseNetwork()
optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
criterion = nn.BCELoss()
for epoch in range(2):
    model.train()
    for images_1, images_2, targets in loader:
        optimizer.zero_grad()
        outputs = model(images_1, images_2).squeeze()
        loss = criterion(outputs, targets)
        loss.backward()
        optimizer.step()
    scheduler.step()
    model.eval()
    with torch.no_grad():
        for images_1, images_2, targets in loader:
            pred = torch.where(model(images_1, images_2).squeeze() > 0.5, 1, 0)
            correct = pred.eq(targets.view_as(pred)).sum().item()
