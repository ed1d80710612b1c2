import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),  # input [batch, 1, 16, 16]
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # halves height and width
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)  # [batch, 32]
        self.classifier = nn.Linear(32, 10)  # 32 = channels of the last conv
        self.res = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU())  # skip connection

        # TODO: add convolutional layer (priority 0.6): add `nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU()` at the end of `self.res4`, after `nn.ReLU()`: make its line `self.res4 = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU())` (same 32 channels in and out, so nothing else changes)
        self.res4 = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU())  # skip connection

        # TODO: add skip connection (priority 0.6): in __init__ add `self.res5 = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU())`, and in forward, right after `x = x + self.res4(x)`, add `x = x + self.res5(x)` (a residual connection: the block's input added to its output)
        self.res5 = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU())  # skip connection
        self.res2 = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.res3 = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x + self.res(x)
        x = x + self.res2(x)
        x = x + self.res3(x)
        x = x + self.res4(x)
        x = x + self.res5(x)
        x = self.pool(x).flatten(1)  # [batch, 32]
        return self.classifier(x)  # [batch, 10] raw logits

