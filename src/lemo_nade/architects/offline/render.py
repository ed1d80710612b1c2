"""Render an offline-architect ``Architecture`` to readable PyTorch source, and count
its parameters without torch.

Pure: no torch import; ``render`` only writes text. Spatial sizes are computed here, so
a pool that would shrink a map below 1x1 is left out (with a comment) and the code never
hits the "negative dimension" failures the paper reports for LLM-written models (Case 5).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from lemo_nade.architects.offline.arch import Architecture, ConvBlock
from lemo_nade.records import TaskSpec


@dataclass(frozen=True)
class _Stage:
    """A conv block as rendered: where it sits, its input channels and map sizes."""

    index: int  # 1-based, as in the attribute names and notes
    block: ConvBlock
    in_channels: int
    size_in: tuple[int, int]
    size_out: tuple[int, int]
    pooled: bool  # block.pool, unless the map was under 2x2


def _stages(arch: Architecture, task: TaskSpec) -> list[_Stage]:
    channels, h, w = task.input_shape
    stages = []
    for i, block in enumerate(arch.blocks, 1):
        pooled = block.pool and h >= 2 and w >= 2  # MaxPool2d(2) floors: 2x2 -> 1x1, never 0
        size_out = (h // 2, w // 2) if pooled else (h, w)
        stages.append(_Stage(i, block, channels, (h, w), size_out, pooled))
        channels, (h, w) = block.channels, size_out
    return stages


def param_count(arch: Architecture, task: TaskSpec) -> int:
    """Trainable parameters of the rendered ``Net`` for ``task``, without building it."""
    stages, total = _stages(arch, task), 0
    for s in stages:
        b = s.block
        total += s.in_channels * b.channels * b.kernel_size**2 + 2 * b.channels  # conv + BN
        if b.skip and s.in_channels != b.channels:
            total += s.in_channels * b.channels  # 1x1 projection
    (h, w), channels = stages[-1].size_out, stages[-1].block.channels
    widths = [channels * h * w, *arch.dense, task.num_classes]
    return total + sum(a * b + b for a, b in itertools.pairwise(widths))


def _block_init(s: _Stage) -> list[str]:
    b, i, k = s.block, s.index, s.block.kernel_size
    (h, w), (oh, ow) = s.size_in, s.size_out
    comment = f"# block {i}: {s.in_channels} -> {b.channels} ch, {k}x{k}"
    comment += f"{', residual' if b.skip else ''}, {h}x{w} -> {oh}x{ow}"
    if b.pool and not s.pooled:
        comment += " (pool skipped: map too small)"
    conv = f"nn.Conv2d({s.in_channels}, {b.channels}, kernel_size={k}, "
    conv += f"padding={k // 2}, bias=False)"
    layers = [conv, f"nn.BatchNorm2d({b.channels})"]
    tail = ["nn.ReLU()"]
    tail += [f"nn.Dropout2d({b.dropout!r})"] if b.dropout else []
    tail += ["nn.MaxPool2d(2)"] if s.pooled else []
    if not b.skip:
        layers += tail
    lines = [comment, f"self.conv{i} = nn.Sequential(", *(f"    {m}," for m in layers), ")"]
    if b.skip and s.in_channels != b.channels:
        lines.append(
            f"self.skip{i} = nn.Conv2d({s.in_channels}, {b.channels}, kernel_size=1, bias=False)"
            "  # projection"
        )
    if b.skip:
        lines.append(f"self.post{i} = nn.Sequential({', '.join(tail)})")
    return lines


def _block_forward(s: _Stage) -> str:
    b, i = s.block, s.index
    shape = f"  # [N, {b.channels}, {s.size_out[0]}, {s.size_out[1]}]"
    if not b.skip:
        return f"x = self.conv{i}(x){shape}"
    shortcut = f"self.skip{i}(x)" if s.in_channels != b.channels else "x"
    return f"x = self.post{i}(self.conv{i}(x) + {shortcut}){shape}"


def _head_init(arch: Architecture, last: _Stage, num_classes: int) -> list[str]:
    (h, w), channels = last.size_out, last.block.channels
    features = channels * h * w
    hidden = ", ".join(str(u) for u in arch.dense) or "none"
    drop = [f"nn.Dropout({arch.dense_dropout!r})"] if arch.dense_dropout else []
    layers = ["nn.Flatten()"]
    widths = [features, *arch.dense]
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [*drop, f"nn.Linear({fan_in}, {fan_out})", "nn.ReLU()"]
    layers += [*drop, f"nn.Linear({widths[-1]}, {num_classes})"]
    comment = f"# head: {channels}x{h}x{w} = {features} features -> hidden {hidden}"
    comment += f" -> {num_classes} classes"
    return [comment, "self.head = nn.Sequential(", *(f"    {m}," for m in layers), ")"]


_INIT_CALLS = {
    "kaiming": 'nn.init.kaiming_normal_(module.weight, nonlinearity="relu")',
    "xavier": "nn.init.xavier_uniform_(module.weight)",
}


def _weight_init(init: str) -> list[str]:
    if init == "default":
        return []
    return [
        f"# weight init: {init} for conv and linear weights, zero biases",
        "for module in self.modules():",
        "    if isinstance(module, (nn.Conv2d, nn.Linear)):",
        f"        {_INIT_CALLS[init]}",
        "        if module.bias is not None:",
        "            nn.init.zeros_(module.bias)",
    ]


def render(arch: Architecture, task: TaskSpec) -> str:
    """Readable, ruff-clean PyTorch source defining ``class Net(nn.Module)`` for ``task``.

    Imports only ``torch`` and ``torch.nn``; no dunders beyond ``__init__``. Sizes are
    computed here, so the flatten size is a constant and a pool that would shrink a map
    below 1x1 is left out (and says so in a comment)."""
    stages = _stages(arch, task)
    c, h, w = task.input_shape
    init = [ln for s in stages for ln in _block_init(s)]
    init += _head_init(arch, stages[-1], task.num_classes) + _weight_init(arch.init)
    forward = [_block_forward(s) for s in stages]
    forward.append(f"return self.head(x)  # [N, {task.num_classes}]")
    skips = sum(b.skip for b in arch.blocks)
    lines = [
        f'"""Net for {task.dataset}: input {c}x{h}x{w}, {task.num_classes} classes.',
        "",
        f"Written by lemo_nade's offline architect. Conv blocks: {len(stages)} ({skips} residual);",
        f"hidden dense layers: {len(arch.dense)}; weight init: {arch.init}.",
        '"""',
        "",
        "import torch",
        "from torch import nn",
        "",
        "# L2 weight decay for the optimizer; not part of the module (the trainer may read it).",
        f"WEIGHT_DECAY = {arch.weight_decay!r}",
        "",
        "",
        "class Net(nn.Module):",
        "    def __init__(self) -> None:",
        "        super().__init__()",
        *(f"        {ln}" for ln in init),
        "",
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
        *(f"        {ln}" for ln in forward),
    ]
    return "\n".join(lines) + "\n"
