"""Legitimate model code keeps passing the policy: the offline architect's every
rendering, the shared test candidates, and two models written the way LLMs write them
(a ResNet with ``_make_layer`` and a block class passed around, a MobileNet-style net
with dataclass configs, enums and ``self.ops``). Also: the check stays fast."""

from __future__ import annotations

import random
import time

import pytest

from candidates import SMALL_CNN
from lemo_nade.architects.offline.arch import INSTRUCTIONS, apply, initial
from lemo_nade.architects.offline.render import render
from lemo_nade.records import TaskSpec
from lemo_nade.sandbox.policy import check

RESNET = '''"""A small ResNet, as an LLM writes one."""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super(BasicBlock, self).__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self._stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return F.relu(out)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.fc = nn.Sequential(OrderedDict(
            squeeze=nn.Linear(channels, hidden), act=nn.SiLU(), excite=nn.Linear(hidden, channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        return x * w[:, :, None, None]


class Net(nn.Module):
    def __init__(self, block=BasicBlock, layers=(2, 2, 2), num_classes: int = 10) -> None:
        super().__init__()
        self.inplanes = 16
        self._norm = partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1)
        self.conv1 = nn.Conv2d(3, self.inplanes, 3, padding=1, bias=False)
        self.bn1 = self._norm(self.inplanes)
        self.layer1 = self._make_layer(block, 16, layers[0])
        self.layer2 = self._make_layer(block, 32, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 64, layers[2], stride=2)
        self.se = SqueezeExcite(64 * block.expansion)
        self.dropout = nn.Dropout(p=0.2)
        self.fc = nn.Linear(64 * block.expansion, num_classes)
        self.apply(self._init_weights)
        self.register_buffer("scale", torch.tensor(math.sqrt(2.0)))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                self._norm(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self._norm)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, norm_layer=self._norm))
        return nn.Sequential(*layers)

    @property
    def depth(self) -> int:
        return sum(1 for m in self.modules() if isinstance(m, nn.Conv2d))

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_features(x)

    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
        return self.se(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._forward_features(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x))
'''

MOBILE = """import torch
from torch import nn
from dataclasses import dataclass
from typing import List, Tuple
import itertools, operator, functools, enum


class Act(enum.Enum):
    RELU = "relu"
    HS = "hardswish"


@dataclass(frozen=True)
class Stage:
    out: int
    expand: int
    stride: int
    act: Act = Act.RELU


CONFIG: Tuple[Stage, ...] = (Stage(16, 1, 1), Stage(24, 4, 2), Stage(40, 6, 2, Act.HS))
WEIGHT_DECAY = 5e-4


def make_divisible(v: float, divisor: int = 8) -> int:
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, stage: Stage) -> None:
        super().__init__()
        hidden = make_divisible(cin * stage.expand)
        act = nn.Hardswish if stage.act is Act.HS else nn.ReLU6
        self.use_res = stage.stride == 1 and cin == stage.out
        layers: List[nn.Module] = []
        if stage.expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stage.stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), act(),
            nn.Conv2d(hidden, stage.out, 1, bias=False), nn.BatchNorm2d(stage.out),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        blocks, cin = [], 16
        for stage in CONFIG:
            blocks.append(InvertedResidual(cin, stage))
            cin = stage.out
        self.features = nn.Sequential(*blocks)
        self.ops = nn.ModuleList([nn.Identity() for _ in range(2)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        total = functools.reduce(operator.mul, (s.expand for s in CONFIG), 1)
        self.register_buffer("total", torch.tensor(float(total)))
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
        self.pairs = list(itertools.combinations(range(3), 2))
        torch.backends.cudnn.benchmark = True

    def forward(self, x):
        x = self.features(self.stem(x))
        for op in self.ops:
            x = op(x)
        x = torch.cat([x, x], dim=1)[:, : x.shape[1]]
        x = self.pool(x).view(x.size(0), -1)
        return self.classifier(x)
"""


TASKS = (TaskSpec("digits", (1, 8, 8), 10), TaskSpec("cifar10", (3, 32, 32), 10))


def _offline_renderings() -> list[str]:
    """Random walks over every instruction, on two tasks: 2 x 12 walks of 20 edits."""
    sources = []
    for seed in range(24):
        rng, task = random.Random(seed), TASKS[seed % 2]
        arch = initial(task)
        sources.append(render(arch, task))
        for step in range(20):
            arch, _ = apply(arch, rng.choice(list(INSTRUCTIONS)), rng)
            if step % 4 == 3:
                sources.append(render(arch, task))
    return sources


def test_every_offline_rendering_passes() -> None:
    sources = _offline_renderings()
    assert len(sources) == 24 * 6
    refused = [(verdict, s) for s in sources if (verdict := check(s)) is not None]
    assert refused == []


@pytest.mark.parametrize("code", [SMALL_CNN, RESNET, MOBILE], ids=["small", "resnet", "mobile"])
def test_typical_model_code_passes(code: str) -> None:
    compile(code, "<model>", "exec")  # the fixture itself is valid Python
    assert check(code) is None


OWN_PRIVATES = {
    "a private helper method": "self._make_layer(8)",
    "a private attribute": "self._scale * 2",
    "a private name on the own class": "Net._COUNT + 1",
    "super()": "super()._get_name()",
    "inside a closure": "(lambda: self._scale)()",
}


@pytest.mark.parametrize("expr", OWN_PRIVATES.values(), ids=OWN_PRIVATES.keys())
def test_the_candidates_own_private_names_pass(expr: str) -> None:
    code = (
        "from torch import nn\n\n\nclass Net(nn.Module):\n    _COUNT = 0\n\n"
        "    def __init__(self) -> None:\n        super().__init__()\n        self._scale = 2.0\n\n"
        "    def _make_layer(self, c: int) -> nn.Module:\n        return nn.Linear(c, c)\n\n"
        f"    def forward(self, x):\n        y = {expr}\n        return x\n"
    )
    assert check(code) is None, code


def test_names_that_resemble_refused_ones_pass() -> None:
    code = (
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self) -> None:\n        super().__init__()\n"
        "        self.ops = nn.ModuleList([nn.Identity()])\n        self.mp = nn.MaxPool2d(2)\n"
        "        self.classes = 10\n        self.library = {}\n\n"
        "    def forward(self, x):\n        for op in self.ops:\n            x = op(x)\n"
        "        self.load_state_dict(self.state_dict())\n"
        "        return torch.nn.functional.relu(self.mp(x)).eval if False else x\n"
    )
    assert check(code) is None


def test_check_stays_fast_on_a_200_line_candidate() -> None:
    code = RESNET + MOBILE.replace("class Net(", "class Net2(")
    assert 180 <= len(code.splitlines()) <= 220 and check(code) is None
    best = min(_seconds(code) for _ in range(3))
    assert best < 0.25, f"{best * 1000:.1f} ms"  # a few ms unloaded; generous for a busy CI


def _seconds(code: str) -> float:
    start = time.perf_counter()
    check(code)
    return time.perf_counter() - start
