"""Fixed version of device_mismatch_arange.py: the position indices are created on the input's device."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class SequenceClassifier(nn.Module):
    def __init__(self, vocab=50, length=12, width=32, classes=4):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(length, width)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        hidden = self.tokens(tokens) + self.positions(steps)
        return self.head(hidden.mean(dim=1))


def make_data(n=512, length=12):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (n, length), generator=generator)
    labels = tokens[:, 0] % 4
    return TensorDataset(tokens, labels)


def main():
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = DataLoader(make_data(), batch_size=64, shuffle=True)
    model = SequenceClassifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(2):
        model.train()
        for tokens, labels in loader:
            tokens, labels = tokens.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(tokens), labels)
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
