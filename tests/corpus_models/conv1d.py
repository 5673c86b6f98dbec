"""A time-series classifier: 6 sensor channels, Conv1d blocks, 5 activity classes."""

from torch import nn


class SensorNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(6, 32, kernel_size=5), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(32, 64, kernel_size=5), nn.ReLU(), nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))
