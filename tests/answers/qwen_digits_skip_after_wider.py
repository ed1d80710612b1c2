import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=3, padding=1),  # input [batch, 1, 16, 16]
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),  # halves height and width
            nn.Conv2d(64, 64, kernel_size=3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)  # [batch, 32]
        self.classifier = nn.Linear(64, 10)  # 32 = channels of the last conv
        self.res = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU())  # skip connection

        # Add dense layer (priority 1): in __init__ add `self.hidden = nn.Sequential(nn.Linear(32, 32), nn.ReLU())`, and in forward, right before `x = self.classifier(x)`, add `x = self.hidden(x)` (as wide as its input)
        self.hidden = nn.Sequential(nn.Linear(32, 32), nn.ReLU())  # New hidden layer, 10 channels
        # Add more kernel (priority 1): change `nn.Conv2d(1, 32, kernel_size=3, padding=1)` to `nn.Conv2d(1, 32, kernel_size=3, padding=1)` and `nn.BatchNorm2d(32)` to `nn.BatchNorm2d(32)` and `nn.Conv2d(32, 32, kernel_size=3, padding=1)` to `nn.Conv2d(32, 32, kernel_size=3, padding=1)` (32 -> 64 channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x + self.res(x)
        x = self.pool(x).flatten(1)  # [batch, 32]
        x = self.hidden(x)
        x = self.classifier(x)  # [batch, 10] raw logits
        return x

        # Add dense layer (priority 1): in __init__ add `self.hidden = nn.Sequential(nn.Linear(32, 32), nn.ReLU())`, and in forward, right before `x = self.classifier(x)`, add `x = self.hidden(x)`  # No change

