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
            nn.Conv2d(64, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)  # [batch, 32]
        self.classifier = nn.Linear(32, 10)  # 32 = channels of the last conv
        self.res = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU())  # skip connection
        # in __init__ add `self.hidden = nn.Sequential(nn.Linear(32, 32), nn.ReLU())`, and in forward, right before `x = self.classifier(x)`, add `x = self.hidden(x)` (as wide as its input)
        self.hidden = nn.Sequential(nn.Linear(32, 64), nn.ReLU())  # add more kernels

        # Add skip connection (priority 1): in __init__ add `self.res2 = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU())`, and in forward, right before `x = x + self.res(x)`, add `x = x + self.res2(x)`


        # Add dense layer (priority 1): in __init__ add `self.hidden = nn.Sequential(nn.Linear(32, 32), nn.ReLU())`, and in forward, right before `return self.classifier(x)`, add `x = self.hidden(x)`  # No change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x + self.res(x)
        x = x + self.res(x)
        x = self.pool(x).flatten(1)
        x = self.hidden(x)
        x = self.classifier(x)  # [batch, 10] raw logits
        return x

        # Add dense layer (priority 1): in __init__ add `self.hidden = nn.Sequential(nn.Linear(32, 32), nn.ReLU())`, and in forward, right before `return self.classifier(x)`, add `x = self.hidden(x)`  # No change

