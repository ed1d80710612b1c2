"""Instruction following: the graph's structure (engine/structure.py), the source's facts
and the rule per instruction (compliance.py), on hand-made parent/child pairs for every
instruction of Table 2 and on the offline architect's own edits.

Models are tiny (1x8x8 inputs, 3 classes) and exported in this process with static
shapes (the operators are those of the dynamic-batch hand-over; one test goes through
the real archive), each source once per session."""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest
import torch

from lemo_nade import compliance, rules
from lemo_nade.architects.offline.arch import Architecture, ConvBlock, initial, try_apply
from lemo_nade.architects.offline.render import render
from lemo_nade.compliance import FOLLOWED, NOT_FOLLOWED, UNKNOWN, Facts, judge, source_facts
from lemo_nade.config import build_config
from lemo_nade.engine import artifact, structure
from lemo_nade.records import STRUCTURE_COUNTS, STRUCTURE_LISTS, TaskSpec

TASK = TaskSpec("tiny", (1, 8, 8), 3)
HEAD = "import torch\nfrom torch import nn\nimport torch.nn.functional as F\n"


def module(source: str) -> torch.nn.Module:
    namespace: dict[str, Any] = {}
    exec(compile(source, "<test>", "exec"), namespace)  # our own test sources
    torch.manual_seed(0)
    return namespace["Net"]().eval()


@functools.cache
def graph(source: str) -> dict[str, Any]:
    with torch.no_grad():
        program = torch.export.export(module(source), (torch.zeros(1, 1, 8, 8),), strict=False)
    return structure.graph_structure(program)


def facts(source: str) -> Facts:
    return Facts(graph(source), source_facts(source))


def net(
    convs: tuple[int, ...] = (8, 8),
    skips: tuple[int, ...] = (),
    hidden: tuple[int, ...] = (),
    drops: tuple[float, ...] = (),
    init: str = "",
    wd: str = "",
) -> str:
    """A small CNN written by hand: conv+BN+ReLU blocks (``skips``: blocks with a residual,
    projected where the channels change), global pooling to 2x2, hidden Linear+ReLU
    layers, ``drops`` as nn.Dropout before the classifier, an ``nn.init`` call on it, and
    ``WEIGHT_DECAY = wd``."""
    init_lines, forward, c_in = [], [], 1
    for i, c in enumerate(convs):
        init_lines += [f"self.c{i} = nn.Conv2d({c_in}, {c}, 3, padding=1)"]
        init_lines += [f"self.b{i} = nn.BatchNorm2d({c})"]
        main = f"self.b{i}(self.c{i}(x))"
        if i in skips and c_in != c:
            init_lines += [f"self.p{i} = nn.Conv2d({c_in}, {c}, 1)"]
        shortcut = f" + self.p{i}(x)" if c_in != c else " + x"
        forward += [f"x = F.relu({main}{shortcut if i in skips else ''})"]
        c_in = c
    forward += ["x = F.adaptive_avg_pool2d(x, 2).flatten(1)"]
    width = 4 * c_in
    for j, units in enumerate(hidden):
        init_lines += [f"self.h{j} = nn.Linear({width}, {units})"]
        forward += [f"x = F.relu(self.h{j}(x))"]
        width = units
    for k, p in enumerate(drops):
        init_lines += [f"self.d{k} = nn.Dropout({p})"]
        forward += [f"x = self.d{k}(x)"]
    init_lines += [f"self.out = nn.Linear({width}, 3)"]
    init_lines += [f"nn.init.{init}(self.out.weight)"] if init else []
    body = "\n".join(f"        {line}" for line in init_lines)
    steps = "\n".join(f"        {line}" for line in forward)
    decay = f"WEIGHT_DECAY = {wd}\n" if wd else ""
    return (
        f"{HEAD}{decay}\n\nclass Net(nn.Module):\n    def __init__(self):\n"
        f"        super().__init__()\n{body}\n\n    def forward(self, x):\n{steps}\n"
        "        return self.out(x)\n"
    )


# -- the graph's structure -----------------------------------------------------------------

RESIDUALS = {
    "plain": (net((8, 8, 8)), 0, 3, 3),
    "identity residual": (net((8, 8, 8), skips=(1, 2)), 2, 3, 3),
    "projection residual": (net((8, 16), skips=(1,)), 1, 2, 3),
    "residual on the stem": (net((8, 8), skips=(0,)), 1, 2, 3),
}
EXTRA = {
    "densenet cat": ("x = torch.cat([x, F.relu(self.a(x))], 1)", 1),
    "inception cat": ("x = torch.cat([self.a(x), self.b(x)], 1)", 0),
    "gate": ("x = x * torch.sigmoid(self.a(x))", 0),
    "pooled shortcut": ("x = F.relu(self.a(x)) + F.max_pool2d(x, 1)", 1),
    "in-place add": ("y = self.a(x)\n        y += x\n        x = y", 1),
    "same tensor twice": ("x = torch.cat([x, x], 1)[:, :4]", 0),
}


@pytest.mark.parametrize("name", list(RESIDUALS))
def test_skip_connections_and_conv_layers_of_plain_and_residual_nets(name: str) -> None:
    source, skips, layers, ops = RESIDUALS[name]
    g = graph(source)
    assert (g["skip_connections"], g["conv_layers"], g["conv_ops"]) == (skips, layers, ops)
    assert g["batch_norms"] == layers  # a projection has no batch norm of its own here


@pytest.mark.parametrize("name", list(EXTRA))
def test_joins_that_are_and_are_not_skip_connections(name: str) -> None:
    line, skips = EXTRA[name]
    source = f"""{HEAD}
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.out = nn.Linear(1, 3)

    def forward(self, x):
        x = x.repeat(1, 4, 1, 1)
        {line}
        return self.out(x.flatten(1).mean(1, keepdim=True))
"""
    assert graph(source)["skip_connections"] == skips


def test_dense_units_channels_dropout_and_the_archive_round_trip() -> None:
    source = net((8, 16), skips=(1,), hidden=(32, 16), drops=(0.25, 0.5))
    g = graph(source)
    assert g["conv_channels"] == [8, 16] and g["conv_channels_total"] == 24
    assert g["dense_units"] == [32, 16, 3] and g["dense_layers"] == 3 and g["hidden_units"] == 48
    assert g["dropout_layers"] == 2 and g["dropout_rates"] == [0.25, 0.5]
    assert set(g) == STRUCTURE_COUNTS | STRUCTURE_LISTS
    # the measuring child reads the dynamic-batch archive: the same facts
    data = artifact.export_bytes(module(source), torch.zeros(2, 1, 8, 8))
    assert structure.graph_structure(artifact.load(data)) == g
    assert structure.safe_structure(None) == {}  # type: ignore[arg-type]


# -- the source's facts --------------------------------------------------------------------


def test_source_facts_follow_imports_constants_and_arithmetic() -> None:
    source = """
import torch.nn as tnn
from torch.nn import init, Dropout2d
from torch.nn.init import kaiming_uniform_
from torch.nn import functional
import torch
RATE = 0.2
WEIGHT_DECAY = 5 * 1e-4

class Net(tnn.Module):
    def __init__(self, p=0.3):
        super().__init__()
        self.a = tnn.Dropout(p=RATE)
        self.b = Dropout2d()
        self.c = tnn.AlphaDropout(p)
        init.xavier_uniform_(self.a.weight)
        kaiming_uniform_(self.a.weight)

    def forward(self, x):
        x = functional.dropout(x, 0.1, self.training) + torch.dropout(x, p=RATE * 2, train=False)
        return tnn.functional.dropout2d(x)
"""
    f = source_facts(source)
    assert f is not None
    assert f["dropout_rates"] == [0.2, 0.5, None, 0.1, 0.4, 0.5]
    assert f["initialisers"] == ["kaiming_uniform_", "xavier_uniform_"]
    assert f["weight_decay"] == pytest.approx(5e-4)
    assert source_facts("class Net(:\n") is None
    assert source_facts("WEIGHT_DECAY = float('1e-4')\n") == {
        "dropout_rates": [],
        "initialisers": [],
        "weight_decay": None,
    }
    assert source_facts("x = 1\n")["weight_decay"] == 0.0  # type: ignore[index]


# -- the rule per instruction --------------------------------------------------------------

BASE = net((8, 8), hidden=(16,), drops=(0.2,), wd="1e-4")
# (instruction, parent, child, verdict, the reason says): followed and not, for every one
PAIRS = [
    ("ACL", BASE, net((8, 8, 8), hidden=(16,), drops=(0.2,)), FOLLOWED, "conv layers 2 -> 3"),
    ("ACL", net((8, 8)), net((8, 16), skips=(1,)), NOT_FOLLOWED, "conv layers 2 -> 2"),
    ("RCL", net((8, 8, 8)), net((8, 8)), FOLLOWED, "conv layers 3 -> 2"),
    ("RCL", net((8, 8, 8)), net((8, 8, 8), skips=(1,)), NOT_FOLLOWED, "3 -> 3"),
    ("ASC", net((8, 16)), net((8, 16), skips=(1,)), FOLLOWED, "skip connections 0 -> 1"),
    ("ASC", net((8, 8)), net((8, 8, 8)), NOT_FOLLOWED, "skip connections 0 -> 0"),
    ("RSC", net((8, 8, 8), skips=(1, 2)), net((8, 8, 8), skips=(2,)), FOLLOWED, "2 -> 1"),
    ("RSC", net((8, 8), skips=(1,)), net((8, 8, 8), skips=(1,)), NOT_FOLLOWED, "1 -> 1"),
    ("ADL", net(), net(hidden=(16,)), FOLLOWED, "dense layers 1 -> 2"),
    ("ADL", net(hidden=(16,)), net(hidden=(32,)), NOT_FOLLOWED, "dense layers 2 -> 2"),
    ("RDL", net(hidden=(16, 8)), net(hidden=(16,)), FOLLOWED, "dense layers 3 -> 2"),
    ("RDL", net(hidden=(16,)), net(hidden=(8,)), NOT_FOLLOWED, "dense layers 2 -> 2"),
    ("AMK", net((8, 8)), net((12, 8)), FOLLOWED, "conv channels 8,8 -> 12,8"),
    ("AMK", net((8, 8)), net((8, 8, 8)), NOT_FOLLOWED, "conv channels 8,8 -> 8,8,8"),
    ("AMK", net((8, 16)), net((12, 8)), NOT_FOLLOWED, "8,16 -> 12,8"),  # one up, one down
    ("RK", net((8, 16)), net((8, 8, 32)), FOLLOWED, "8,16 -> 8,8,32"),  # a layer added too
    ("RK", net((8, 16)), net((16, 16)), NOT_FOLLOWED, "conv channels 8,16 -> 16,16"),
    ("AMN", net(), net(hidden=(16,)), FOLLOWED, "hidden units none -> 16"),
    ("AMN", net(hidden=(16, 8)), net(hidden=(32, 16, 8)), FOLLOWED, "16,8 -> 32,16,8"),
    ("AMN", net(hidden=(16,)), net(hidden=(16,), drops=(0.5,)), NOT_FOLLOWED, "16 -> 16"),
    ("RN", net(hidden=(32,)), net(hidden=(16,)), FOLLOWED, "hidden units 32 -> 16"),
    ("RN", net(hidden=(32,)), net(hidden=(64,)), NOT_FOLLOWED, "hidden units 32 -> 64"),
    ("AD", net(), net(drops=(0.2,)), FOLLOWED, "dropout none -> 0.2"),
    ("AD", net(drops=(0.2,)), net(drops=(0.4,)), FOLLOWED, "dropout 0.2 -> 0.4"),
    ("AD", net(drops=(0.3,)), net(drops=(0.3,), hidden=(8,)), NOT_FOLLOWED, "0.3 -> 0.3"),
    ("RD", net(drops=(0.2, 0.2)), net(drops=(0.2,)), FOLLOWED, "dropout 0.2,0.2 -> 0.2"),
    ("RD", net(drops=(0.2,)), net(drops=(0.3,)), NOT_FOLLOWED, "dropout 0.2 -> 0.3"),
    ("AWI", net(), net(init="kaiming_normal_"), FOLLOWED, "initialisers added: kaiming_normal_"),
    ("AWI", net(init="xavier_uniform_"), net(init="xavier_uniform_"), NOT_FOLLOWED, "no new"),
    ("AR", net(), net(wd="1e-4"), FOLLOWED, "weight decay 0 -> 0.0001"),
    ("AR", net(wd="1e-4"), net(wd="1e-4", drops=(0.1,)), FOLLOWED, "dropout none -> 0.1"),
    ("AR", net(wd="1e-3"), net(wd="1e-4", drops=(0.1,)), NOT_FOLLOWED, "0.001 -> 0.0001"),
    ("AR", net(wd="1e-4"), net(wd="1e-4"), NOT_FOLLOWED, "weight decay 0.0001 -> 0.0001"),
    ("RR", net(wd="1e-3"), net(wd="1e-4"), FOLLOWED, "weight decay 0.001 -> 0.0001"),
    ("RR", net(wd="1e-4"), net(wd="1e-3"), NOT_FOLLOWED, "weight decay 0.0001 -> 0.001"),
]


@pytest.mark.parametrize(("code", "parent", "child", "verdict", "reason"), PAIRS)
def test_each_instruction_followed_and_not(
    code: str, parent: str, child: str, verdict: str, reason: str
) -> None:
    ((got_code, got, why),) = judge([(code, 1.0)], facts(parent), facts(child))
    assert (got_code, got) == (code, verdict), why
    assert reason in why


def test_every_instruction_has_a_rule_and_both_verdicts_are_tested() -> None:
    assert set(compliance.RULES) == set(rules.INSTRUCTIONS)
    tested = {(code, verdict) for code, _, _, verdict, _ in PAIRS}
    assert tested == {(c, v) for c in rules.INSTRUCTIONS for v in (FOLLOWED, NOT_FOLLOWED)}


def test_unknown_where_a_fact_is_missing() -> None:
    parent, child = net(), net((8, 8, 8), init="kaiming_normal_")
    legacy = Facts(None, source_facts(parent))  # a parent measured before structures
    verdicts = judge([("ACL", 1.0), ("AWI", 0.5), ("XYZ", 0.1)], legacy, facts(child))
    assert [v.verdict for v in verdicts] == [UNKNOWN, FOLLOWED, UNKNOWN]
    assert verdicts[0].reason == "no graph facts for the parent"
    no_source = Facts(graph(child), None)
    assert judge([("AR", 1.0)], facts(parent), no_source)[0].verdict == UNKNOWN
    counts = compliance.tally(verdicts)
    assert counts == {FOLLOWED: 1, NOT_FOLLOWED: 0, UNKNOWN: 2}
    assert compliance.rate(counts) == 1.0 and compliance.followed_text(verdicts) == (
        "1 of 3, 2 unknown"
    )


def test_matching_layers_in_order() -> None:
    moved = compliance._moved
    assert moved([8, 16], [12, 24], up=True) == 1
    assert moved([8, 16], [8, 16], up=True) == 0
    assert moved([8, 16], [12, 8], up=True) == -1  # one up, one down: no matching is clean
    assert moved([16, 32, 64], [20, 44], up=False) == 1  # block 1 removed, the rest narrowed
    assert moved([16, 32], [12, 20, 44], up=False) == 1  # a wider block appended
    assert moved([16, 32], [12, 20, 44], up=True) == 1  # ... which also reads as up (lenient)
    assert moved([4], [4, 4, 4], up=True) == 0


# -- the offline architect's edits ---------------------------------------------------------

# A model every edit applies to: residual and plain blocks, a hidden layer, dropout, an
# initialiser and weight decay, each below its limit and above zero.
RICH = Architecture(
    blocks=(ConvBlock(16), ConvBlock(16, skip=True, dropout=0.1), ConvBlock(32, pool=True)),
    dense=(64,),
    dense_dropout=0.1,
    init="kaiming",
    weight_decay=1e-4,
)


def offline_facts(arch: Architecture) -> Facts:
    return facts(render(arch, TASK))


@pytest.mark.parametrize("code", rules.INSTRUCTIONS)
def test_each_offline_edit_is_judged_followed(code: str) -> None:
    new, note = try_apply(RICH, code, random.Random(0))
    assert new is not None, note
    ((_, verdict, reason),) = judge([(code, 1.0)], offline_facts(RICH), offline_facts(new))
    assert verdict == FOLLOWED, f"{note}: {reason}"


def composed_steps(seed: int, steps: int) -> list[tuple[Architecture, Architecture, list[str]]]:
    """A chain of offline proposals: each step's instructions come from Algorithms 2 and 3
    on random metrics (default priorities and thresholds) and are applied in order with
    ``try_apply``, as ``OfflineArchitect.propose`` applies them; the child is the next
    parent. Returns (parent, child, the instructions applied that could act on the
    parent). An edit that only acts on what an earlier edit of the same step added (RN
    on the hidden layer ADL just made, from a head without one) is left out: against
    the parent it changed nothing, and the checker rightly says so."""
    cfg = build_config({})
    priorities, thresholds = cfg.priorities.model_dump(), cfg.thresholds.model_dump()
    rng, arch, out = random.Random(seed), initial(TASK), []
    for _ in range(steps):
        metrics = {
            "A1": rng.uniform(0.3, 1.0),
            "A2": rng.uniform(0.3, 1.0),
            "E1": rng.uniform(0, 2 * thresholds["TE1"]),
            "E2": rng.uniform(0, 2 * thresholds["TE2"]),
            "F": rng.uniform(0, 2 * thresholds["TF"]),
        }
        resolved = rules.instructions_for(metrics, priorities, thresholds)[1]
        child, applied = arch, []
        for code in [c for c, _ in resolved] or [rng.choice(rules.INSTRUCTIONS)]:
            new, _note = try_apply(child, code, rng)
            if new is not None:
                child = new
                if try_apply(arch, code, random.Random(0))[0] is not None:
                    applied.append(code)
        out.append((arch, child, applied))
        arch = child
    return out


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_composed_offline_edits_are_all_judged_followed(seed: int) -> None:
    checked = 0
    for parent, child, applied in composed_steps(seed, 15):
        verdicts = judge([(c, 1.0) for c in applied], offline_facts(parent), offline_facts(child))
        wrong = [v for v in verdicts if v.verdict != FOLLOWED]
        assert wrong == [], (parent.to_dict(), child.to_dict())
        checked += len(verdicts)
    assert checked >= 15
