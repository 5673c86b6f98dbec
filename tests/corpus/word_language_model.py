"""pytorch/examples word_language_model shape: LSTM LM over batchified token streams,
truncated BPTT with a detached hidden state, clip_grad_norm_, a hand-written SGD update
(p.data.add_(p.grad, alpha=-lr)) after model.zero_grad()."""
import torch
import torch.nn as nn


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp, nhid):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, 1)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        return nn.functional.log_softmax(self.decoder(self.drop(output)), dim=-1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(1, bsz, 16), weight.new_zeros(1, bsz, 16))


def repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


torch.manual_seed(0)
ntokens, bptt, lr = 50, 10, 20.0
stream = torch.arange(2000) % ntokens  # a learnable, periodic "corpus"
train_data, val_data = batchify(stream, 8), batchify(stream[:400], 4)
model = RNNModel(ntokens, 16, 16)
criterion = nn.NLLLoss()
for epoch in range(2):
    model.train()
    hidden = model.init_hidden(8)
    for i in range(0, train_data.size(0) - 1, bptt):
        seq_len = min(bptt, len(train_data) - 1 - i)
        data, targets = train_data[i:i + seq_len], train_data[i + 1:i + 1 + seq_len].view(-1)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output.view(-1, ntokens), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        if i > 200:
            break
    model.eval()
    with torch.no_grad():
        hidden = model.init_hidden(4)
        output, hidden = model(val_data[:bptt], hidden)
        val_loss = criterion(output.view(-1, ntokens), val_data[1:bptt + 1].reshape(-1))
