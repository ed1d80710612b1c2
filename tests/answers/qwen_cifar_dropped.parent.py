import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),  # input [batch, 3, 32, 32]
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # halves height and width
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)  # [batch, 32, H, W] -> [batch, 32, 1, 1]
        self.classifier = nn.Linear(32, 10)  # 32 = channels of the last conv
        self.res = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU())  # skip connection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x + self.res(x)
        x = self.pool(x).flatten(1)  # [batch, 32]
        return self.classifier(x)  # [batch, 10] raw logits
