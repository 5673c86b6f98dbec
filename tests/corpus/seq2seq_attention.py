"""PyTorch tutorial "Seq2seq translation with attention" shape: GRU encoder, attention
decoder with log_softmax, NLLLoss, two optimizers, teacher forcing, greedy decoding."""
import torch
import torch.nn as nn
import torch.nn.functional as F

SOS, MAX_LENGTH, VOCAB, HIDDEN = 0, 6, 12, 16


class EncoderRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, HIDDEN)
        self.gru = nn.GRU(HIDDEN, HIDDEN, batch_first=True)

    def forward(self, x):
        return self.gru(self.embedding(x))


class AttnDecoderRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, HIDDEN)
        self.attention = nn.Linear(2 * HIDDEN, 1)
        self.gru = nn.GRU(2 * HIDDEN, HIDDEN, batch_first=True)
        self.out = nn.Linear(HIDDEN, VOCAB)

    def forward(self, encoder_outputs, hidden, target=None):
        inp = torch.full((encoder_outputs.size(0), 1), SOS, dtype=torch.long)
        outputs = []
        for i in range(MAX_LENGTH):
            emb = self.embedding(inp)
            query = hidden.permute(1, 0, 2).expand(-1, encoder_outputs.size(1), -1)
            weights = F.softmax(self.attention(torch.cat([query, encoder_outputs], 2)), dim=1)
            context = (weights * encoder_outputs).sum(1, keepdim=True)
            output, hidden = self.gru(torch.cat([emb, context], 2), hidden)
            outputs.append(self.out(output))
            inp = target[:, i].unsqueeze(1) if target is not None else outputs[-1].argmax(-1).detach()
        return F.log_softmax(torch.cat(outputs, 1), dim=-1), hidden


torch.manual_seed(0)
source = torch.randint(1, VOCAB, (64, MAX_LENGTH))
target = source.flip(1)  # learn to reverse
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(source, target), batch_size=16)
encoder, decoder = EncoderRNN(), AttnDecoderRNN()
encoder_optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
decoder_optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
criterion = nn.NLLLoss()
for epoch in range(3):
    for input_tensor, target_tensor in loader:
        encoder_optimizer.zero_grad()
        decoder_optimizer.zero_grad()
        encoder_outputs, encoder_hidden = encoder(input_tensor)
        decoder_outputs, _ = decoder(encoder_outputs, encoder_hidden, target_tensor)
        loss = criterion(decoder_outputs.view(-1, VOCAB), target_tensor.view(-1))
        loss.backward()
        encoder_optimizer.step()
        decoder_optimizer.step()
with torch.no_grad():
    encoder_outputs, encoder_hidden = encoder(source[:4])
    decoded, _ = decoder(encoder_outputs, encoder_hidden)
