"""A small causal transformer language model (nanoGPT-shaped): token and position
embeddings, a TransformerEncoder with a causal mask, logits (B, T, vocab)."""

import torch
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab_size=65, block_size=32, d_model=64):
        super().__init__()
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(block_size, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=128,
                                           dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, idx):
        steps = idx.shape[1]
        positions = torch.arange(steps, device=idx.device)
        x = self.token(idx) + self.position(positions)
        mask = nn.Transformer.generate_square_subsequent_mask(steps, device=idx.device)
        return self.head(self.blocks(x, mask=mask, is_causal=True))
