"""The concrete edits the prompts give per instruction (hints.py): on the two shapes of
code small models write (layers in an nn.Sequential; layers as attributes used one by one
in forward), each edit, carried out literally as its text says, gives a model that builds,
returns logits of the right shape, and that the instruction checker judges ``followed``.
Code it does not understand gets no edit, and the prompt falls back to the general how-to.
"""

from __future__ import annotations

import re

import pytest
import torch

from lemo_nade import hints, prompts
from lemo_nade.compliance import FOLLOWED, judge
from lemo_nade.records import ProposalRequest, TaskSpec
from test_compliance import facts, module

SEQUENTIAL = """\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(16, 12),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(12, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x).flatten(1)
        return self.classifier(x)
"""

ATTRIBUTES = """\
import torch
from torch import nn
import torch.nn.functional as F

WEIGHT_DECAY = 0.001


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = x + F.relu(self.conv3(x))
        x = self.pool(x).flatten(1)
        return self.fc(x)
"""

ADD = ("ACL", "ASC", "ADL", "AMK", "AMN", "AD", "AWI", "AR")
REMOVE = ("RCL", "RDL", "RK", "RN", "RD", "RR")


def carry_out(code: str, hint: str) -> str:
    """``code`` edited exactly as ``hint`` says, by text alone (what a model has to do)."""
    lines = code.splitlines()
    indent = lambda n: re.match(r"\s*", lines[n - 1]).group(0)  # noqa: E731
    inserts: list[tuple[int, str]] = []  # (after line, text)
    pair = r"add `(self\.\w+ = .*?)`, and in forward, right (after|before) line (\d+) `.*?`, add"
    if m := re.search(pair + r" `(.*?)`", hint):
        init_at = next(i for i, s in enumerate(lines, 1) if "super().__init__()" in s)
        inserts.append((init_at, indent(init_at) + m.group(1)))
        n = int(m.group(3))
        inserts.append((n if m.group(2) == "after" else n - 1, indent(n) + m.group(4)))
    elif m := re.search(r"right (after|before) `.*?` \(line (\d+)\).*?, add `(.*?)`", hint):
        n = int(m.group(2))
        inserts.append((n if m.group(1) == "after" else n - 1, indent(n) + m.group(3)))
    elif m := re.search(r"set (?:the module constant )?`(WEIGHT_DECAY = .*?)`", hint):
        lines = [s for s in lines if not s.startswith("WEIGHT_DECAY")]
        inserts.append((3, m.group(1)))
    elif hint.startswith("at the end of __init__ add:\n"):
        forward = next(i for i, s in enumerate(lines, 1) if "def forward" in s)
        inserts.append((forward - 2, "\n".join(hint.splitlines()[1:])))
    elif m := re.search(r"^delete `(.*?)` \(line (\d+)\)( and the BatchNorm2d and ReLU)?", hint):
        n, extra = int(m.group(2)), 2 if m.group(3) else 0
        if "and the activation after it" in hint:
            extra = 1
        for old, k, new in re.findall(r"`([^`]*)` \(line (\d+)\) to `([^`]*)`", hint):
            lines[int(k) - 1] = lines[int(k) - 1].replace(old, new)
        gone = [n + i for i in range(extra + 1)]
        if f := re.search(r"in forward, line (\d+) `", hint):
            gone.append(int(f.group(1)))
        lines = [s for i, s in enumerate(lines, 1) if i not in gone]
    elif m := re.search(r"in forward, line (\d+) `(.*?)`: drop the `\+`", hint):
        lines[int(m.group(1)) - 1] = lines[int(m.group(1)) - 1].replace("x + ", "")
    elif re.search(r"^change ", hint):
        for old, n, new in re.findall(r"`([^`]*)` \(line (\d+)\) to `([^`]*)`", hint):
            lines[int(n) - 1] = lines[int(n) - 1].replace(old, new)
    else:
        raise AssertionError(f"no way to carry out: {hint}")
    for after, text in sorted(inserts, reverse=True):
        lines.insert(after, text)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("source", [SEQUENTIAL, ATTRIBUTES], ids=["sequential", "attributes"])
@pytest.mark.parametrize("code", ADD + REMOVE)
def test_each_edit_builds_and_is_followed(source: str, code: str) -> None:
    hint = hints.hint(source, code)
    if not hint:
        # every instruction gets an edit on these parents except removing what is not there
        assert (code, source) in {("RDL", ATTRIBUTES), ("RN", ATTRIBUTES), ("RD", ATTRIBUTES)}
        return
    child = carry_out(source, hint)
    assert child != source, hint
    with torch.no_grad():
        assert module(child)(torch.zeros(2, 1, 8, 8)).shape == (2, 3), child
    (verdict,) = judge([(code, 1.0)], facts(source), facts(child))
    assert verdict.verdict == FOLLOWED, (hint, verdict.reason, child)


def test_edits_quote_the_parents_own_lines() -> None:
    assert hints.hint(SEQUENTIAL, "ACL") == (
        "right after `nn.ReLU()` (line 14), the last layer of `self.features`, add "
        "`nn.Conv2d(16, 16, kernel_size=3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),` "
        "(same 16 channels in and out, so nothing else changes)"
    )
    assert "`nn.Conv2d(1, 16, 3, padding=1)`" in hints.hint(ATTRIBUTES, "AMK")
    assert "line 21 `x = x + F.relu(self.conv3(x))`" in hints.hint(ATTRIBUTES, "RSC")
    assert "`WEIGHT_DECAY = 0.01` (now 0.001)" in hints.hint(ATTRIBUTES, "AR")
    assert "`WEIGHT_DECAY = 0.0001` (now 0.001)" in hints.hint(ATTRIBUTES, "RR")
    # a parent with kaiming already is asked for another initialiser, which the checker sees
    inits = SEQUENTIAL.replace(
        "nn.ReLU(),\n        )",
        "nn.ReLU(),\n        )\n        nn.init.kaiming_normal_(self.features[0].weight)",
        1,
    )
    assert "xavier_uniform_" in hints.hint(inits, "AWI")


LOOPED = """\
import torch
from torch import nn

WIDTH = 16


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else WIDTH, WIDTH, 3) for i in range(3)])
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.head(x.mean((2, 3)))
"""


@pytest.mark.parametrize(
    "source", [LOOPED, "not python (", "class Other:\n    pass\n", ""], ids=str.__len__
)
def test_code_it_does_not_understand_gets_the_general_how_to(source: str) -> None:
    for code in ("ACL", "AMK", "RCL", "AMN", "ASC"):
        assert hints.hint(source, code) == ""
    request = ProposalRequest(0, TaskSpec("tiny", (1, 8, 8), 3), source, None, (("ACL", 1.0),))
    assert prompts.HOW_TO["ACL"] in prompts.iteration_prompt(request)


def test_the_prompt_and_the_unchanged_repair_carry_the_edit() -> None:
    request = ProposalRequest(0, TaskSpec("tiny", (1, 8, 8), 3), SEQUENTIAL, None, (("AD", 1.0),))
    edit = hints.hint(SEQUENTIAL, "AD")
    assert edit and edit in prompts.iteration_prompt(request)
    assert edit in prompts.unchanged_text(request)
