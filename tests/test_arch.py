"""Structured architectures (pure): one concrete edit per Table 2 instruction, the limits,
JSON state, and rendering that always parses and passes the code policy's basics."""

from __future__ import annotations

import ast
import json
import random
import re
import subprocess
import sys
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lemo_nade.architects.offline.arch import (
    EDITS,
    ArchError,
    Architecture,
    ConvBlock,
    apply,
    explore,
    initial,
    try_apply,
)
from lemo_nade.architects.offline.render import render
from lemo_nade.records import TaskSpec
from lemo_nade.rules import INSTRUCTIONS

DIGITS = TaskSpec("digits", (1, 8, 8), 10)
CIFAR10 = TaskSpec("cifar10", (3, 32, 32), 10)
IMAGENET16 = TaskSpec("imagenet16-120", (3, 16, 16), 120)
TASKS = (DIGITS, CIFAR10, IMAGENET16)

# A parent with something for every edit to work on.
BASE = Architecture(
    blocks=(ConvBlock(16), ConvBlock(32, pool=True), ConvBlock(32, 5, skip=True, dropout=0.2)),
    dense=(256, 64),
    dense_dropout=0.1,
    weight_decay=1e-3,
)


def _channels(arch: Architecture) -> tuple[int, ...]:
    return tuple(b.channels for b in arch.blocks)


def test_initial_is_the_papers_first_model() -> None:
    arch = initial(DIGITS)
    assert arch == initial(CIFAR10)
    assert arch.blocks == (ConvBlock(16, 3), ConvBlock(32, 3, pool=True))
    assert not any(b.skip or b.dropout for b in arch.blocks)
    assert (arch.dense, arch.init, arch.weight_decay) == ((), "default", 0.0)


def test_one_edit_per_instruction_in_rule_book_order() -> None:
    assert tuple(EDITS) == INSTRUCTIONS


# ---- the deterministic edits: exact expected architecture from BASE ------------------
def _blocks(**per_field: tuple[object, ...]) -> tuple[ConvBlock, ...]:
    """BASE's blocks with one field replaced block by block."""
    ((name, values),) = per_field.items()
    return tuple(replace(b, **{name: v}) for b, v in zip(BASE.blocks, values, strict=True))


EXPECTED = {
    "ASC": replace(BASE, blocks=_blocks(skip=(False, True, True))),  # not the stem first
    "RSC": replace(BASE, blocks=_blocks(skip=(False, False, False))),
    "ADL": replace(BASE, dense=(256, 64, 32)),  # half the last hidden layer
    "RDL": replace(BASE, dense=(256,)),
    "AD": replace(BASE, blocks=_blocks(dropout=(0.1, 0.1, 0.3)), dense_dropout=0.2),
    "RD": replace(BASE, blocks=_blocks(dropout=(0.0, 0.0, 0.1)), dense_dropout=0.0),
    "AMK": replace(BASE, blocks=_blocks(channels=(24, 48, 48))),  # x1.5, multiple of 4
    "RK": replace(BASE, blocks=_blocks(channels=(12, 20, 20))),  # /1.5: 10.7 -> 12, 21.3 -> 20
    "AWI": replace(BASE, init="kaiming"),
    "AR": replace(BASE, weight_decay=1e-2),  # x10
    "RR": replace(BASE, weight_decay=1e-4),  # /10
    "AMN": replace(BASE, dense=(512, 128)),  # x2
    "RN": replace(BASE, dense=(128, 32)),  # /2
}


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_edit_makes_its_concrete_change(code: str) -> None:
    new, note = apply(BASE, code, random.Random(0))
    assert new == EXPECTED[code]
    assert note.startswith(f"{code}: ")


def test_acl_appends_a_block_like_the_last_doubling_channels_when_it_pools() -> None:
    seen = set()
    for seed in range(20):
        new, note = apply(BASE, "ACL", random.Random(seed))
        assert new.blocks[:3] == BASE.blocks and len(new.blocks) == 4
        block = new.blocks[-1]
        assert block.channels == (64 if block.pool else 32)
        assert block.kernel_size in (3, 5) and not block.skip
        assert block.dropout == BASE.blocks[-1].dropout
        assert note.startswith("ACL: added conv block 4")
        seen.add((block.pool, block.kernel_size))
    assert len(seen) == 4  # both pooling and both kernel sizes come from the rng


def test_acl_doubling_is_capped() -> None:
    arch = Architecture(blocks=(ConvBlock(512),))
    for seed in range(10):
        new, _ = apply(arch, "ACL", random.Random(seed))
        assert new.blocks[-1].channels == 512


def test_rcl_removes_one_block_chosen_by_the_rng() -> None:
    removed = set()
    for seed in range(20):
        new, note = apply(BASE, "RCL", random.Random(seed))
        assert len(new.blocks) == 2
        match = re.match(r"RCL: removed conv block (\d)", note)
        assert match is not None
        index = int(match.group(1)) - 1
        assert new.blocks == BASE.blocks[:index] + BASE.blocks[index + 1 :]
        removed.add(index)
    assert removed == {0, 1, 2}


# ---- the stepwise edits, from the initial model --------------------------------------
def _chain(arch: Architecture, code: str, steps: int) -> list[Architecture]:
    out = []
    for _ in range(steps):
        arch, _ = apply(arch, code, random.Random(0))
        out.append(arch)
    return out


def test_ad_starts_at_0_1_and_stops_at_the_cap() -> None:
    chain = _chain(initial(DIGITS), "AD", 6)
    assert [a.blocks[0].dropout for a in chain] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.5]
    assert [a.dense_dropout for a in chain] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.5]


def test_ar_and_rr_step_by_tens_and_rr_drops_to_zero() -> None:
    up = _chain(initial(DIGITS), "AR", 4)
    assert [a.weight_decay for a in up] == [1e-4, 1e-3, 1e-2, 1e-2]
    down = _chain(up[-1], "RR", 5)
    assert [a.weight_decay for a in down] == [1e-3, 1e-4, 1e-5, 0.0, 0.0]


def test_awi_goes_kaiming_then_xavier() -> None:
    assert [a.init for a in _chain(initial(DIGITS), "AWI", 3)] == ["kaiming", "xavier", "xavier"]


@pytest.mark.parametrize("code", ["ADL", "AMN"])
def test_adl_and_amn_give_a_classifier_only_head_a_hidden_layer(code: str) -> None:
    new, _ = apply(initial(DIGITS), code, random.Random(0))
    assert new.dense == (128,)


def test_asc_reaches_the_stem_last() -> None:
    skips = [tuple(b.skip for b in a.blocks) for a in _chain(BASE, "ASC", 3)]
    assert skips == [(False, True, True), (True, True, True), (True, True, True)]


def test_channel_scaling_rounds_to_4_and_respects_limits() -> None:
    arch = Architecture(blocks=(ConvBlock(400), ConvBlock(4), ConvBlock(6)))
    assert _channels(apply(arch, "AMK", random.Random(0))[0]) == (512, 8, 8)
    assert _channels(apply(arch, "RK", random.Random(0))[0]) == (268, 4, 4)


# ---- not applicable: unchanged, with the reason ---------------------------------------
def _many(n: int, **fields: object) -> tuple[ConvBlock, ...]:
    return tuple(ConvBlock(**{"channels": 16, **fields}) for _ in range(n))  # type: ignore[arg-type]


NOT_APPLICABLE = [
    ("ACL", Architecture(blocks=_many(12)), "limit of 12 conv blocks"),
    ("RCL", Architecture(blocks=_many(1)), "only one conv block"),
    ("ASC", Architecture(blocks=_many(3, skip=True)), "already has a skip"),
    ("RSC", initial(DIGITS), "no skip connections"),
    ("ADL", replace(BASE, dense=(64,) * 4), "limit of 4 hidden dense"),
    ("RDL", initial(DIGITS), "no hidden dense layers"),
    ("AD", Architecture(blocks=_many(2, dropout=0.5), dense_dropout=0.5), "0.5 cap"),
    ("RD", initial(DIGITS), "already at 0"),
    ("AMK", Architecture(blocks=_many(2, channels=512)), "at 512 channels"),
    ("RK", Architecture(blocks=_many(2, channels=4)), "at 4 channels"),
    ("AWI", replace(BASE, init="xavier"), "tried already"),
    ("AR", replace(BASE, weight_decay=1e-2), "0.01 cap"),
    ("RR", initial(DIGITS), "no weight decay"),
    ("AMN", replace(BASE, dense=(2048, 2048)), "at 2048 units"),
    ("RN", initial(DIGITS), "no hidden dense layers"),
    ("RN", replace(BASE, dense=(8,)), "at 8 units"),
]


@pytest.mark.parametrize(("code", "arch", "reason"), NOT_APPLICABLE)
def test_edit_not_applicable_leaves_architecture_unchanged(
    code: str, arch: Architecture, reason: str
) -> None:
    new, note = apply(arch, code, random.Random(0))
    assert new is arch
    assert note.startswith(f"{code}: ") and reason in note
    assert try_apply(arch, code, random.Random(0))[0] is None


def test_unknown_instruction_is_an_error() -> None:
    with pytest.raises(ArchError, match="unknown instruction 'XYZ'"):
        apply(BASE, "XYZ", random.Random(0))


# ---- limits and JSON state -------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": 3}, {"channels": 513}, {"channels": 16.0}, {"channels": True},
        {"channels": 16, "kernel_size": 4}, {"channels": 16, "kernel_size": 9},
        {"channels": 16, "dropout": 0.6}, {"channels": 16, "dropout": -0.1},
        {"channels": 16, "dropout": float("nan")}, {"channels": 16, "skip": 1},
    ],
)  # fmt: skip
def test_conv_block_limits(kwargs: dict[str, object]) -> None:
    with pytest.raises(ArchError):
        ConvBlock(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"blocks": ()}, {"blocks": _many(13)}, {"blocks": list(_many(2))},
        {"dense": (64,) * 5}, {"dense": (4,)}, {"dense": (4096,)}, {"dense": [64]},
        {"dense_dropout": 0.7}, {"init": "orthogonal"}, {"weight_decay": 0.1},
        {"weight_decay": -1e-4},
    ],
)  # fmt: skip
def test_architecture_limits(kwargs: dict[str, object]) -> None:
    with pytest.raises(ArchError):
        Architecture(**{"blocks": _many(2), **kwargs})  # type: ignore[arg-type]


def test_json_round_trip_accepts_json_ints_for_floats() -> None:
    data = json.loads(json.dumps(BASE.to_dict()))
    assert Architecture.from_dict(data) == BASE
    data["weight_decay"], data["blocks"][0]["dropout"] = 0, 0
    assert Architecture.from_dict(data).weight_decay == 0.0


@pytest.mark.parametrize(
    "data",
    [{}, {"blocks": [{"kernel_size": 3}]}, {"blocks": [{"channels": 8, "colour": 1}]},
     {"blocks": 5}, {"blocks": [{"channels": 2}]}],
)  # fmt: skip
def test_unreadable_state_is_an_arch_error(data: dict[str, object]) -> None:
    with pytest.raises(ArchError):
        Architecture.from_dict(data)


# ---- explore --------------------------------------------------------------------------
def test_explore_always_makes_one_applicable_edit_and_is_seeded() -> None:
    arch = initial(DIGITS)
    codes = set()
    for seed in range(30):
        new, note = explore(arch, random.Random(seed))
        assert new != arch and note.startswith("explore: ")
        assert (new, note) == explore(arch, random.Random(seed))
        codes.add(note.split()[1].rstrip(":"))
    assert len(codes) >= 6  # draws from the whole rule book, not one favourite


# ---- rendering --------------------------------------------------------------------------
ALLOWED_IMPORTS = {"torch", "torch.nn", "torch.nn.functional"}
FORBIDDEN_NAMES = {"getattr", "setattr", "eval", "exec", "open", "compile", "__import__"}


def assert_policy_basics(source: str) -> ast.Module:
    """What the sandbox's AST policy checks, in miniature: imports, names, dunders."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= ALLOWED_IMPORTS
        elif isinstance(node, ast.ImportFrom):
            assert node.module in ALLOWED_IMPORTS
        elif isinstance(node, ast.Name):
            assert node.id not in FORBIDDEN_NAMES
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            assert node.attr == "__init__"
    assert [n.name for n in tree.body if isinstance(n, ast.ClassDef)] == ["Net"]
    return tree


def _sizes(source: str) -> list[tuple[int, ...]]:
    return [tuple(map(int, m)) for m in re.findall(r"# \[N, (\d+), (\d+), (\d+)\]", source)]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.dataset)
def test_pooling_never_collapses_a_dimension(task: TaskSpec) -> None:
    arch = Architecture(blocks=_many(12, pool=True))
    source = render(arch, task)
    sizes = _sizes(source)
    assert len(sizes) == 12 and all(h >= 1 and w >= 1 for _, h, w in sizes)
    assert sizes[-1][1:] == (1, 1)
    assert "pool skipped" in source
    assert f"nn.Linear(16, {task.num_classes})" in source  # 16 channels x 1 x 1


def test_render_writes_weight_decay_and_init() -> None:
    source = render(replace(BASE, init="kaiming", weight_decay=1e-3), CIFAR10)
    assert "WEIGHT_DECAY = 0.001\n" in source
    assert "kaiming_normal_" in source and "xavier" not in source
    assert "xavier_uniform_" in render(replace(BASE, init="xavier"), CIFAR10)
    assert "nn.init" not in render(BASE, CIFAR10)


def test_render_of_the_initial_digits_model() -> None:
    source = render(initial(DIGITS), DIGITS)
    assert _sizes(source) == [(16, 8, 8), (32, 4, 4)]
    assert "nn.Linear(512, 10)" in source  # 32 x 4 x 4
    assert_policy_basics(source)


@settings(max_examples=150, deadline=None)
@given(
    codes=st.lists(st.sampled_from(INSTRUCTIONS), max_size=40),
    seed=st.integers(0, 2**32),
    task=st.sampled_from(TASKS),
)
def test_any_instruction_sequence_stays_valid_and_renders(
    codes: list[str], seed: int, task: TaskSpec
) -> None:
    rng = random.Random(seed)
    arch = initial(task)
    for code in codes:
        arch, _ = apply(arch, code, rng)
    assert Architecture.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
    source = render(arch, task)
    assert_policy_basics(source)
    assert all(h >= 1 and w >= 1 for _, h, w in _sizes(source))
    assert render(arch, task) == source


def test_arch_and_offline_architect_import_no_torch() -> None:
    code = (
        "import sys, lemo_nade.architects.offline.arch, lemo_nade.architects.offline; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
