"""Fixed: numerics.py with the safe expressions.

An epsilon under the standard deviation, log_softmax instead of log(softmax), and
torch.logsumexp instead of log(exp(x).sum()), a per-class count clamped to at least 1. `torchdoctor check` finds nothing here.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from torchdoctor.reference.data import load_fashion_mnist


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = x.flatten(1)
        x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-5)
        return self.fc2(torch.relu(self.fc1(x)))


def train_epoch(model, loader, optimizer):
    model.train()
    for images, labels in loader:
        optimizer.zero_grad()
        logits = model(images)
        loss = F.nll_loss(F.log_softmax(logits, dim=1), labels)
        loss.backward()
        optimizer.step()


def evaluate(model, loader):
    model.eval()
    correct, energy, recall = 0, 0.0, torch.zeros(10)
    with torch.no_grad():
        for images, labels in loader:
            logits = model(images)
            hits = (logits.argmax(dim=1) == labels).float()
            correct += hits.sum().item()
            onehot = F.one_hot(labels, 10).float()
            recall += (hits.unsqueeze(1) * onehot).sum(0) / onehot.sum(0).clamp_min(1)
            energy += torch.logsumexp(logits, dim=1).mean().item()
    print(f"per-class recall: {(recall / len(loader)).tolist()}")
    return correct / len(loader.dataset), energy / len(loader)


def main():
    torch.manual_seed(0)
    train_set = Subset(load_fashion_mnist(train=True, download=False), range(1024))
    test_set = Subset(load_fashion_mnist(train=False, download=False), range(256))
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=16)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        train_epoch(model, train_loader, optimizer)
        accuracy, energy = evaluate(model, test_loader)
        print(f"epoch {epoch}: accuracy {accuracy:.3f}, energy {energy:.3f}")


if __name__ == "__main__":
    main()
