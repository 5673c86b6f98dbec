"""A model whose forward uses a bare parameter: nothing says what input it takes."""

import torch
from torch import nn


class Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(7, 3))

    def forward(self, x):
        return x @ self.weight
