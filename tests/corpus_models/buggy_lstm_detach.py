"""Bug: the LSTM text classifier detaches the LSTM's output in forward, so the
embedding and the LSTM never learn (overfit-one-batch)."""

from torch import nn


class DetachedTextClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(1000, 32)
        self.lstm = nn.LSTM(32, 32, batch_first=True)
        self.fc = nn.Linear(32, 4)

    def forward(self, tokens):
        _, (hidden, _) = self.lstm(self.embedding(tokens))
        return self.fc(hidden[-1].detach())  # BUG: cuts the graph
