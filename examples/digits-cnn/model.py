"""A small convolutional network for 8x8 digits."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self, channels: int = 16, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc1 = nn.Linear(2 * channels * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 8, 8)
        x = torch.relu(self.conv1(x))  # (B, C, 8, 8)
        x = torch.relu(self.conv2(x))  # (B, 2C, 8, 8)
        x = torch.max_pool2d(x, 2)  # (B, 2C, 4, 4)
        x = torch.relu(self.fc1(x.flatten(1)))  # (B, hidden)
        return self.fc2(x)  # (B, classes)
