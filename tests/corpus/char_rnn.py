"""PyTorch tutorial "Classifying names with a character-level RNN" shape: a hand-built
RNN cell stepped over characters one at a time, LogSoftmax + NLLLoss, rnn.zero_grad()
and a hand-written update p.data.add_(p.grad.data, alpha=-lr)."""
import torch
import torch.nn as nn

LETTERS, HIDDEN, CATEGORIES = 8, 16, 3


class RNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.i2h = nn.Linear(LETTERS + HIDDEN, HIDDEN)
        self.i2o = nn.Linear(LETTERS + HIDDEN, CATEGORIES)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, input, hidden):
        combined = torch.cat((input, hidden), 1)
        return self.softmax(self.i2o(combined)), torch.tanh(self.i2h(combined))

    def init_hidden(self):
        return torch.zeros(1, HIDDEN)


def line_tensor(category, g):
    letters = torch.randint(0, LETTERS, (5,), generator=g)
    letters[0] = category  # the first letter gives the category away
    return nn.functional.one_hot(letters, LETTERS).float().unsqueeze(1)


rnn = RNN()
criterion = nn.NLLLoss()
learning_rate = 0.05
g = torch.Generator().manual_seed(0)
for it in range(60):
    category = int(torch.randint(0, CATEGORIES, (1,), generator=g))
    line = line_tensor(category, g)
    hidden = rnn.init_hidden()
    rnn.zero_grad()
    for i in range(line.size(0)):
        output, hidden = rnn(line[i], hidden)
    loss = criterion(output, torch.tensor([category]))
    loss.backward()
    for p in rnn.parameters():
        p.data.add_(p.grad.data, alpha=-learning_rate)
with torch.no_grad():
    hidden = rnn.init_hidden()
    line = line_tensor(1, g)
    for i in range(line.size(0)):
        output, hidden = rnn(line[i], hidden)
