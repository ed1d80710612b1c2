"""A hand-written anchor for `shifted-digits` (and any 1-channel 16x16 task): three
conv blocks (32, 64, 64 channels, BN, ReLU, 2x2 max-pool each) and one linear layer.

    python bench/discovery.py --arm offline --arm reference:examples/reference_shifted_digits.py
"""

import torch
from torch import nn


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
    )


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(block(1, 32), block(32, 64), block(64, 64))
        self.classifier = nn.Linear(64 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
