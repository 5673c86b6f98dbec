"""A classifier returning a Hugging Face-style dataclass output (``.logits``), and a
siamese network whose forward takes two images and returns a dict."""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ClassifierOutput:
    logits: torch.Tensor
    hidden: torch.Tensor


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 32), nn.Tanh())
        self.classifier = nn.Linear(32, 3)

    def forward(self, features):
        hidden = self.body(features)
        return ClassifierOutput(logits=self.classifier(hidden), hidden=hidden)


class Siamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 16))
        self.head = nn.Linear(32, 2)

    def forward(self, left, right):
        both = torch.cat([self.tower(left), self.tower(right)], dim=1)
        return {"logits": self.head(both), "embedding": both}
