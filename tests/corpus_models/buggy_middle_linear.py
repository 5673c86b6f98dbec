"""Bug: a tabular regressor whose second Linear expects 32 features where the first
gives 64 (shape-mismatch names it)."""

from torch import nn


class BrokenRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                                 nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)
