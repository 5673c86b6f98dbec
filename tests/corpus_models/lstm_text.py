"""An LSTM text classifier: token ids -> embedding -> LSTM -> last hidden state -> 4
classes (AG-News style)."""

from torch import nn


class TextClassifier(nn.Module):
    def __init__(self, vocab_size=1000, embed=64, hidden=64, classes=4):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, tokens):
        _, (hidden, _) = self.lstm(self.embedding(tokens))
        return self.fc(hidden[-1])
