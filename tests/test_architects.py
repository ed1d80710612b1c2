"""One contract for every registered architect, parametrised over the registry.

A new architect is covered by registering it: it is built like an LLM endpoint (pointed
at the scripted server on 127.0.0.1) unless :func:`build` knows better, as it does for
``offline`` (no setup) and ``replay`` (a run recorded here against the scripted server).

The contract: for a first request and for a repair (``last_error`` set), ``propose``
returns code that passes the sandbox policy, or no code and a one-line ``rejected``; the
same request and seed give the same proposal where the registration claims determinism;
an architect that cannot answer raises :class:`ArchitectUnavailable` with a one-line
message; its doctor checks are well-formed rows that never show the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_llm import FakeLLM, serve
from lemo_nade.architects import (
    STATUSES,
    Architect,
    ArchitectUnavailable,
    Check,
    architect_checks,
    available,
    create_architect,
    registration,
)
from lemo_nade.architects.offline.arch import initial
from lemo_nade.architects.offline.render import render
from lemo_nade.config import RunConfig, build_config
from lemo_nade.datasets import resolve_dataset
from lemo_nade.records import Proposal, ProposalRequest
from lemo_nade.runs import create_run
from lemo_nade.sandbox.policy import check
from lemo_nade.search import run_search

TASK = resolve_dataset("digits", None)
GOOD = render(initial(TASK), TASK)
SHAPE_BUG = GOOD.replace(", 10)", ", 7)")
ERROR = "Net output is [2, 7]; expected [2, 10]"
KEY_ENV, SECRET = "LEMO_NADE_CONTRACT_KEY", "sk-contract-NEVER-SHOWN-0123456789"
CLOSED = "http://127.0.0.1:9/v1"  # the discard port: nothing listens, refused at once

FIRST = ProposalRequest(0, TASK, None, None, (), seed=3)
REPAIR = ProposalRequest(
    0,
    TASK,
    None,
    None,
    (),
    last_error=ERROR,
    seed=3,
    failed_code=SHAPE_BUG,
    attempt=1,
    history=((f"```python\n{SHAPE_BUG}```", ERROR),),
)
REQUESTS = {"first": FIRST, "repair": REPAIR}
NAMES = available()


def answer(code: str) -> str:
    return f"Here is the model.\n\n```python\n{code}```\n"


def endpoint_config(name: str, base_url: str, **extra: Any) -> RunConfig:
    flags = {
        "llm": f"{name}:fake-model",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "llm_retries": 0,
        "llm_timeout_s": 5.0,
        "seed": 3,
        **extra,
    }
    return build_config({}, flags)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLM]:
    """One scripted server for the module (stopping one takes half a second)."""
    with serve() as fake:
        yield fake


@pytest.fixture(scope="module")
def recording(server: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run recorded against the scripted server: iteration 0 answered with a shape bug
    (attempt 0), then repaired (attempt 1); the replay answers exactly these."""
    server.script = [("answer", answer(SHAPE_BUG)), ("answer", answer(GOOD))]
    cfg = build_config({}, {"llm": "ollama:fake-model", "base_url": server.base_url,
                            "iterations": 1, "epochs": 1, "seed": 3})  # fmt: skip
    return run_search(create_run(cfg, tmp_path_factory.mktemp("recorded"))).run_dir


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.fixture
def fake(server: FakeLLM, recording: Path) -> FakeLLM:
    """The module's server with a fresh script: good answers (after the recording)."""
    server.script = [("answer", answer(GOOD))] * 4
    server.requests.clear()
    return server


def working_config(name: str, fake: FakeLLM, recording: Path) -> RunConfig:
    """A configuration under which the architect ``name`` can answer."""
    if name in ("offline", "random"):
        return build_config({}, {"llm": name, "seed": 3})
    if name == "reference":
        model = recording.parent / "reference_model.py"
        model.write_text(GOOD)
        return build_config({}, {"llm": f"reference:{model}", "seed": 3})
    if name == "replay":
        return build_config({}, {"llm": f"replay:{recording}", "seed": 3})
    return endpoint_config(name, fake.base_url)


def build(name: str, fake: FakeLLM, recording: Path) -> Architect:
    cfg = working_config(name, fake, recording)
    return create_architect(cfg.llm, seed=cfg.seed, config=cfg, check=name != "offline")


def _one_line(text: str | None) -> bool:
    return bool(text) and "\n" not in str(text)


@pytest.mark.parametrize("request_kind", REQUESTS)
@pytest.mark.parametrize("name", NAMES)
def test_proposes_policy_clean_code_or_says_why(
    name: str, request_kind: str, fake: FakeLLM, recording: Path
) -> None:
    proposal = build(name, fake, recording).propose(REQUESTS[request_kind])
    assert isinstance(proposal, Proposal)
    if proposal.rejected is not None:
        assert proposal.code == "" and _one_line(proposal.rejected), proposal
    else:
        assert check(proposal.code) is None, (name, check(proposal.code))
        assert proposal.code.count("class Net(") == 1


@pytest.mark.parametrize("name", NAMES)
def test_a_rejection_is_one_clear_line(name: str, fake: FakeLLM, recording: Path) -> None:
    """An answer without code is rejected with the reason, not passed on as code."""
    if name in ("offline", "replay", "random", "reference"):
        pytest.skip(f"{name} only gives what it built, was given or was recorded")
    fake.script = [("answer", "Add two conv layers and dropout.")]
    proposal = build(name, fake, recording).propose(FIRST)
    assert proposal.code == "" and _one_line(proposal.rejected)
    assert "python" in str(proposal.rejected)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_where_claimed(name: str, fake: FakeLLM, recording: Path) -> None:
    if not registration(name).deterministic:
        pytest.skip(f"{name} does not claim determinism (a model's sampling)")

    def seen(p: Proposal) -> tuple[Any, ...]:
        return (p.code, p.state, p.notes, p.rejected, p.answer)

    for request in REQUESTS.values():
        one, two = build(name, fake, recording), build(name, fake, recording)
        assert seen(one.propose(request)) == seen(two.propose(request))


def test_the_replay_gives_the_recorded_repair(recording: Path, fake: FakeLLM) -> None:
    replay = build("replay", fake, recording)
    assert replay.propose(FIRST).code == SHAPE_BUG and replay.propose(REPAIR).code == GOOD


@pytest.mark.parametrize("name", NAMES)
def test_unavailable_is_one_line(name: str, fake: FakeLLM, recording: Path) -> None:
    if name in ("offline", "random", "reference"):
        pytest.skip(f"{name} needs nothing that can be unavailable")
    if name == "replay":
        architect = build(name, fake, recording)
        past_the_end = ProposalRequest(5, TASK, GOOD, None, ())
        with pytest.raises(ArchitectUnavailable) as caught:
            architect.propose(past_the_end)
        assert _one_line(str(caught.value)) and "iteration 5" in str(caught.value)
        return
    fake.script = []  # the scripted server answers 503 from now on
    for base_url, needle in ((CLOSED, "APIConnectionError"), (fake.base_url, "HTTP 503")):
        cfg = endpoint_config(name, base_url)
        architect = create_architect(cfg.llm, config=cfg)  # no check: fails at propose
        with pytest.raises(ArchitectUnavailable) as caught:
            architect.propose(FIRST)
        message = str(caught.value)
        assert _one_line(message) and message.startswith(f"{name}:fake-model: "), message
        assert needle in message and SECRET not in message


def _well_formed(rows: list[Check]) -> None:
    assert rows and all(isinstance(row, Check) for row in rows)
    for row in rows:
        assert row.name and row.status in STATUSES and _one_line(row.detail), row
        assert SECRET not in row.detail
        assert row.row() == {"check": row.name, "status": row.status, "detail": row.detail}


@pytest.mark.parametrize("name", NAMES)
def test_checks_are_well_formed(name: str, fake: FakeLLM, recording: Path) -> None:
    rows = architect_checks(working_config(name, fake, recording))
    _well_formed(rows)
    assert not [row for row in rows if row.status == "fail"], rows
    assert rows[0].name == "architect"


@pytest.mark.parametrize("name", NAMES)
def test_checks_report_a_broken_setup(name: str, tmp_path: Path) -> None:
    if name in ("offline", "random"):
        pytest.skip(f"{name} has no setup to break")
    if name in ("replay", "reference"):  # a run directory without a run; a missing file
        cfg = build_config({}, {"llm": f"{name}:{tmp_path / ('' if name == 'replay' else 'x.py')}"})
    else:
        cfg = endpoint_config(name, CLOSED)
    rows = architect_checks(cfg)
    _well_formed(rows)
    assert [row.status for row in rows].count("fail") == 1, rows


def test_an_unknown_architect_is_one_failed_check() -> None:
    (row,) = architect_checks(build_config({}, {"llm": "nosuch:model"}))
    assert row.status == "fail" and "unknown architect 'nosuch'" in row.detail


def test_the_registry_is_what_the_suite_covers() -> None:
    assert {"offline", "replay", "openai", "random", "reference"} <= set(NAMES)
    assert registration("offline").deterministic and registration("replay").deterministic
    assert not registration("openai").deterministic
