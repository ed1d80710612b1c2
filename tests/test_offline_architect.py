"""The offline architect: registry, proposals, determinism, and rendered code that really
builds in torch with the right output shape (no dimension collapse)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lemo_nade.architects import ArchitectError, available, create_architect
from lemo_nade.architects.offline import DEFAULT_MAX_PARAMS, OfflineArchitect
from lemo_nade.architects.offline.arch import Architecture, ConvBlock, apply, initial
from lemo_nade.architects.offline.render import param_count, render
from lemo_nade.records import ProposalRequest, TaskSpec
from lemo_nade.rules import INSTRUCTIONS, resolve_conflict

DIGITS = TaskSpec("digits", (1, 8, 8), 10)
CIFAR10 = TaskSpec("cifar10", (3, 32, 32), 10)
IMAGENET16 = TaskSpec("imagenet16-120", (3, 16, 16), 120)
TASKS = (DIGITS, CIFAR10, IMAGENET16)


def build(source: str) -> tuple[nn.Module, dict[str, Any]]:
    """Test-only: run the rendered module source and instantiate ``Net``."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<rendered>", "exec"), namespace)
    torch.manual_seed(0)
    return namespace["Net"](), namespace


def output_shape(arch: Architecture, task: TaskSpec) -> tuple[int, ...]:
    net, _ = build(render(arch, task))
    net.eval()
    with torch.no_grad():
        return tuple(net(torch.zeros(2, *task.input_shape)).shape)


def request(
    iteration: int = 1,
    instructions: tuple[str, ...] = (),
    state: dict[str, Any] | None = None,
    parent_code: str | None = "# parent",
    task: TaskSpec = DIGITS,
) -> ProposalRequest:
    return ProposalRequest(
        iteration=iteration,
        task=task,
        parent_code=parent_code,
        parent_metrics=None,
        instructions=tuple((code, 1.0) for code in instructions),
        parent_state=state,
    )


# ---- registry ---------------------------------------------------------------------------
def test_registered_as_offline_and_ignores_unknown_options() -> None:
    assert "offline" in available()
    architect = create_architect("offline", seed=7, temperature=0.3)
    assert isinstance(architect, OfflineArchitect)
    assert (architect.name, architect.seed) == ("offline", 7)
    assert architect.max_params == DEFAULT_MAX_PARAMS
    capped = create_architect("offline", max_params=1000)
    assert isinstance(capped, OfflineArchitect) and capped.max_params == 1000


def test_offline_takes_no_argument() -> None:
    with pytest.raises(ArchitectError, match="offline takes no argument"):
        create_architect("offline:gpt-4o")


# ---- rendered code in torch -------------------------------------------------------------
def test_initial_digits_parameter_count_by_hand() -> None:
    net, namespace = build(render(initial(DIGITS), DIGITS))
    conv1 = 1 * 16 * 3 * 3  # no conv bias: BatchNorm follows
    bn1 = 2 * 16  # weight + bias
    conv2 = 16 * 32 * 3 * 3
    bn2 = 2 * 32
    classifier = (32 * 4 * 4) * 10 + 10  # 8x8 pooled once to 4x4
    assert conv1 + bn1 + conv2 + bn2 + classifier == 9978
    assert sum(p.numel() for p in net.parameters()) == 9978
    assert namespace["WEIGHT_DECAY"] == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_param_count_matches_torch(seed: int) -> None:
    rng = random.Random(seed)
    arch = initial(DIGITS)
    for code in rng.choices(["ACL", "ASC", "ADL", "AMN", "RK", "RCL", "AD", "AWI"], k=10):
        arch, _ = apply(arch, code, rng)
    task = TASKS[seed % 3]
    net, _ = build(render(arch, task))
    assert param_count(arch, task) == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.dataset)
def test_initial_model_fits_each_task(task: TaskSpec) -> None:
    assert output_shape(initial(task), task) == (2, task.num_classes)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.dataset)
def test_pool_everywhere_does_not_collapse(task: TaskSpec) -> None:
    arch = Architecture(blocks=tuple(ConvBlock(8, pool=True, skip=i % 2 == 1) for i in range(12)))
    assert output_shape(arch, task) == (2, task.num_classes)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.dataset)
def test_many_block_adding_edits_still_build(task: TaskSpec) -> None:
    arch, rng = initial(task), random.Random(3)
    for code in ["ACL", "ASC", "ACL", "ACL", "RK", "ACL", "ASC", "ACL", "RK", "ACL", "ACL"]:
        arch, _ = apply(arch, code, rng)
    assert len(arch.blocks) == 9 and sum(b.pool for b in arch.blocks) >= 4
    assert output_shape(arch, task) == (2, task.num_classes)


def test_every_instruction_once_builds_with_dropout_and_init() -> None:
    arch, rng = initial(CIFAR10), random.Random(0)
    for code in INSTRUCTIONS:
        arch, _ = apply(arch, code, rng)
    arch = replace(arch, init="xavier", dense_dropout=0.2)
    net, namespace = build(render(arch, CIFAR10))
    assert namespace["WEIGHT_DECAY"] == arch.weight_decay
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert linears and all(torch.all(m.bias == 0) for m in linears)  # the init loop ran
    assert output_shape(arch, CIFAR10) == (2, 10)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_rendered_code_is_ruff_clean(tmp_path: Path) -> None:
    arch, rng = initial(CIFAR10), random.Random(1)
    for code in ["ACL", "ASC", "ADL", "AD", "AWI", "AR", "ACL", "ASC"]:
        arch, _ = apply(arch, code, rng)
    for name, source in [
        ("first.py", render(initial(DIGITS), DIGITS)),
        ("later.py", render(arch, CIFAR10)),
    ]:
        (tmp_path / name).write_text(source)
    config = Path(__file__).resolve().parents[1] / "pyproject.toml"
    result = subprocess.run(
        ["ruff", "check", "--no-cache", "--config", str(config), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


# ---- proposals ----------------------------------------------------------------------------
def test_first_proposal_is_the_initial_model_as_is() -> None:
    proposal = OfflineArchitect(0).propose(request(0, parent_code=None))
    assert proposal.state == initial(DIGITS).to_dict()
    assert proposal.code == render(initial(DIGITS), DIGITS)
    assert "initial model" in proposal.notes and proposal.usage is None


def test_instructions_are_applied_in_order_to_the_parent_state() -> None:
    parent = initial(DIGITS).to_dict()
    proposal = OfflineArchitect(0).propose(request(1, ("ADL", "AR", "ASC"), parent))
    arch = Architecture.from_dict(proposal.state or {})
    assert arch.dense == (128,) and arch.weight_decay == 1e-4 and arch.blocks[1].skip
    assert [n.split(":")[0] for n in proposal.notes.split("; ")] == ["ADL", "AR", "ASC"]
    assert proposal.code == render(arch, DIGITS)


def test_no_instructions_explores() -> None:
    parent = initial(DIGITS).to_dict()
    proposal = OfflineArchitect(0).propose(request(5, (), parent))
    assert proposal.notes.startswith("explore: ")
    assert proposal.state != parent


def test_only_inapplicable_instructions_fall_back_to_explore() -> None:
    parent = initial(DIGITS).to_dict()
    proposal = OfflineArchitect(0).propose(request(5, ("RSC", "RDL", "RR"), parent))
    notes = proposal.notes.split("; ")
    assert notes[:3] == [
        "RSC: no skip connections to remove",
        "RDL: no hidden dense layers to remove (the classifier stays)",
        "RR: no weight decay to reduce",
    ]
    assert notes[3].startswith("explore: ") and proposal.state != parent


def test_parent_without_usable_state_restarts_from_initial() -> None:
    proposal = OfflineArchitect(0).propose(request(3, ("ADL",), None))
    assert "no architecture state" in proposal.notes
    assert Architecture.from_dict(proposal.state or {}).dense == (128,)
    proposal = OfflineArchitect(0).propose(request(3, ("ADL",), {"layers": "resnet"}))
    assert "unreadable" in proposal.notes


def test_same_request_and_seed_give_identical_code_and_seeds_matter() -> None:
    state = initial(CIFAR10).to_dict()
    for iteration in range(5):
        req = request(iteration, ("ACL", "ASC"), state, task=CIFAR10)
        assert OfflineArchitect(4).propose(req) == OfflineArchitect(4).propose(req)
    codes = {
        OfflineArchitect(seed).propose(request(1, ("ACL",), state, task=CIFAR10)).code
        for seed in range(8)
    }
    assert len(codes) > 1


def test_a_search_of_resolved_instructions_keeps_building() -> None:
    """A loop in miniature: random rule values -> Algorithm 3 -> propose -> feed state back."""
    architect, rng = create_architect("offline", seed=11), random.Random(11)
    proposal = architect.propose(request(0, parent_code=None, task=IMAGENET16))
    for iteration in range(1, 16):
        values = {code: rng.choice([0.0, 0.0, 0.3, 0.5, 0.8]) for code in INSTRUCTIONS}
        resolved = tuple(code for code, _ in resolve_conflict(values))
        req = request(iteration, resolved, proposal.state, proposal.code, IMAGENET16)
        proposal = architect.propose(req)
        assert proposal.notes  # every step says what it did
        arch = Architecture.from_dict(proposal.state or {})
        assert param_count(arch, IMAGENET16) <= DEFAULT_MAX_PARAMS
        assert output_shape(arch, IMAGENET16) == (2, 120)


def test_growth_past_the_parameter_cap_is_skipped() -> None:
    parent = initial(DIGITS)  # 9,978 parameters; a 128-unit hidden layer adds ~66k
    architect = OfflineArchitect(0, max_params=20_000)
    proposal = architect.propose(request(1, ("AMN", "AD"), parent.to_dict()))
    assert re.match(
        r"AMN: skipped, would make \d{2,3},\d{3} parameters \(cap 20,000\)", proposal.notes
    )
    arch = Architecture.from_dict(proposal.state or {})
    assert arch.dense == () and arch.blocks[0].dropout == 0.1  # AD still applied
    for iteration in range(20):  # explore respects the cap too
        state = architect.propose(request(iteration, (), parent.to_dict())).state or {}
        assert param_count(Architecture.from_dict(state), DIGITS) <= 20_000


def test_shrinking_is_allowed_above_the_cap() -> None:
    parent = replace(initial(DIGITS), dense=(2048,))
    proposal = OfflineArchitect(0, max_params=1_000).propose(request(1, ("RN",), parent.to_dict()))
    assert Architecture.from_dict(proposal.state or {}).dense == (1024,)


def test_the_code_that_just_failed_is_not_proposed_again() -> None:
    first = OfflineArchitect(0).propose(request(0, parent_code=None))
    retry = ProposalRequest(
        iteration=1,
        task=DIGITS,
        parent_code=None,
        parent_metrics=None,
        instructions=(),
        last_error="TIMEOUT",
        failed_code=first.code,
    )
    proposal = OfflineArchitect(0).propose(retry)
    assert proposal.code != first.code
    assert "same as the candidate that just failed; explore: " in proposal.notes
    parent = initial(DIGITS).to_dict()
    failed = OfflineArchitect(0).propose(request(2, ("AMK",), parent))  # AMK is deterministic
    again = replace(request(3, ("AMK",), parent), failed_code=failed.code)
    assert OfflineArchitect(0).propose(again).code != failed.code


def test_an_initial_model_over_the_cap_says_so() -> None:
    first = request(0, (), None, parent_code=None)
    proposal = OfflineArchitect(0, max_params=1000).propose(first)
    assert "9,978 parameters, over max_params 1,000" in proposal.notes
