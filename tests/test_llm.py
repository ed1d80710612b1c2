"""LLM architects through the real openai SDK against a scripted server on 127.0.0.1."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fake_llm import FakeLLM, serve
from lemo_nade import answers, prompts
from lemo_nade.architects import ArchitectError, context, create_architect
from lemo_nade.architects.offline.arch import initial
from lemo_nade.architects.offline.render import render
from lemo_nade.cli import app
from lemo_nade.config import RunConfig, build_config
from lemo_nade.datasets import resolve_dataset
from lemo_nade.records import Status
from lemo_nade.runs import create_run
from lemo_nade.search import SearchResult, run_search
from lemo_nade.store import RunStore

runner = CliRunner()
pytest_plugins = ["sandbox_fixtures"]
pytestmark = pytest.mark.usefixtures("shared_sandbox")  # one fork server for these runs
TASK = resolve_dataset("digits", None)
GOOD = render(initial(TASK), TASK)
SHAPE_BUG = GOOD.replace(", 10)", ", 7)")
SECRET = "sk-test-DO-NOT-STORE-1234567890"


def answer(code: str) -> str:
    return f"Here is the model.\n\n```python\n{code}```\nIt should train well."


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with serve() as server:
        yield server


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def config(fake: FakeLLM, **extra: Any) -> RunConfig:
    flags = {
        "llm": "ollama:fake-model",
        "base_url": fake.base_url,
        "iterations": 1,
        "epochs": 1,
        "seed": 2,
        "llm_retries": 1,
        "llm_timeout_s": 5.0,
        "dataset": "digits",  # the scripted answers are 8x8 models
        "search": "paper",
        **extra,
    }
    return build_config({}, flags)


def search(fake: FakeLLM, tmp_path: Path, **extra: Any) -> SearchResult:
    run_dir = create_run(config(fake, **extra), tmp_path / "runs")
    return run_search(run_dir)


def test_shape_bug_is_sent_back_and_the_fix_is_kept(fake: FakeLLM, tmp_path: Path) -> None:
    assert SHAPE_BUG != GOOD
    fake.script = [("answer", answer(SHAPE_BUG)), ("answer", answer(GOOD))]
    result = search(fake, tmp_path)
    (rec,) = result.records
    assert rec.status is Status.OK and rec.code == GOOD
    assert [a.status.value for a in rec.attempts] == ["failed_shape", "ok"]
    second = fake.chat_requests()[1]["body"]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert "expected [2, 10]" in second[3]["content"]
    assert SHAPE_BUG.strip() in second[2]["content"]
    assert rec.usage is not None and rec.usage.calls == 2 and rec.usage.total_tokens > 0
    assert rec.usage.cost_usd == 0.0  # a local provider costs nothing by default
    assert [c.attempt for c in rec.calls] == [0, 1]


# llama.cpp's refusal of the local model's third attempt of a digits iteration
TOO_LONG = (400, "request (8291 tokens) exceeds the available context size (8192 tokens)")


def test_a_chat_longer_than_the_context_is_sent_again_with_fewer_exchanges(
    fake: FakeLLM, tmp_path: Path
) -> None:
    fake.script = [("answer", answer(SHAPE_BUG)), ("answer", answer(GOOD.replace(", 10)", ", 8)"))),
                   ("status", TOO_LONG), ("answer", answer(GOOD))]  # fmt: skip
    (rec,) = search(fake, tmp_path).records
    assert rec.status is Status.OK and rec.code == GOOD
    chats = [r["body"]["messages"] for r in fake.chat_requests()]
    assert [len(chat) for chat in chats] == [2, 4, 6, 4]
    assert chats[3][:2] == chats[2][:2] and chats[3][2:] == chats[2][4:]  # the last exchange
    assert rec.calls[-1].payload["request"]["messages"] == chats[3]  # stored as sent


def test_a_prompt_too_long_on_its_own_stops_the_run_saying_so(
    fake: FakeLLM, tmp_path: Path
) -> None:
    fake.script = [("status", TOO_LONG)]
    result = search(fake, tmp_path)
    assert result.stop_reason.startswith("llm_unavailable")
    assert "refused even with no earlier exchanges (HTTP 400" in result.stop_reason
    assert "exceeds the available context size" in result.stop_reason
    assert len(fake.chat_requests()) == 1


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (TOO_LONG[1], True),
        ("This model's maximum context length is 8192 tokens. However, you requested 9000 "
         "tokens (code: context_length_exceeded)", True),  # OpenAI, vLLM
        ("prompt is too long: 9000 tokens > 8192 maximum", True),
        ("Invalid value for 'temperature'", False),
    ],
)  # fmt: skip
def test_refusals_for_length_are_told_apart(message: str, expected: bool) -> None:
    assert context.too_long(message) is expected


def test_the_key_is_sent_but_never_stored(fake: FakeLLM, tmp_path: Path) -> None:
    fake.script = [("answer", answer(GOOD))]
    result = search(fake, tmp_path)
    assert fake.chat_requests()[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    for path in result.run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_first_prompt_has_the_task_and_the_initial_command(fake: FakeLLM, tmp_path: Path) -> None:
    fake.script = [("answer", answer(GOOD))]
    search(fake, tmp_path, initial_command="Start tiny.", temperature=0.4)
    body = fake.chat_requests()[0]["body"]
    assert body["temperature"] == 0.4 and body["seed"] == 2 and body["model"] == "fake-model"
    user = body["messages"][1]["content"]
    assert user.startswith("Start tiny.")
    assert "[batch, 1, 8, 8]" in user and "10 classes" in user


@pytest.mark.parametrize(
    ("bad_step", "status", "needle"),
    [
        (("answer", "You should add two more conv layers and dropout."), "failed_extract", "no"),
        (("raw", "{this is not json"), "failed_extract", "valid chat completion"),
        (("answer", answer(GOOD) + answer(GOOD)), "failed_extract", "2 code blocks"),
        (
            (
                "answer",
                answer(
                    "import os\n"
                    + GOOD.replace("x = self.conv1(x)", "x = self.conv1(x) + len(os.sep)")
                ),
            ),
            "failed_policy",
            "os",
        ),
    ],
)
def test_unusable_answers_are_recorded_then_repaired(
    fake: FakeLLM, tmp_path: Path, bad_step: tuple[str, str], status: str, needle: str
) -> None:
    fake.script = [bad_step, ("answer", answer(GOOD))]
    (rec,) = search(fake, tmp_path).records
    assert [a.status.value for a in rec.attempts] == [status, "ok"]
    assert needle in rec.attempts[0].error
    repair = fake.chat_requests()[1]["body"]["messages"][-1]["content"]
    assert "could not be used" in repair


def test_with_resample_a_failed_answer_is_asked_afresh_and_replays_the_same(
    tmp_path: Path,
) -> None:
    """``retry_with = "resample"`` (the discover search's default): after a failure the
    same chat again, warmer and with another seed; no repair turn. A replay of the run
    builds the same prompts (``prompt_matches``) and the same candidates."""
    with serve() as fake:
        fake.script = [("answer", answer(SHAPE_BUG)), ("answer", answer(GOOD))]
        (rec,) = search(fake, tmp_path, retry_with="resample").records
        first, second = (r["body"] for r in fake.chat_requests())
    assert [a.status.value for a in rec.attempts] == ["failed_shape", "ok"]
    assert rec.code == GOOD
    assert second["messages"] == first["messages"]  # asked afresh: no repair turn
    assert (first["temperature"], second["temperature"]) == (0.0, 0.7)
    assert second["seed"] != first["seed"]
    out = runner.invoke(
        app, ["run", "--llm", f"replay:{rec_dir(tmp_path)}", "--runs-dir", str(tmp_path / "re")]
    )
    assert out.exit_code == 0, out.output
    (replay_dir,) = (tmp_path / "re").iterdir()
    with RunStore.open(replay_dir) as st:
        (replayed,) = st.iterations()
    assert replayed.code == GOOD
    assert [c.payload["prompt_matches"] for c in replayed.calls] == [True, True]


def rec_dir(tmp_path: Path) -> Path:
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


def test_429_then_success_is_retried_by_the_sdk(fake: FakeLLM, tmp_path: Path) -> None:
    fake.script = [("status", 429), ("answer", answer(GOOD))]
    (rec,) = search(fake, tmp_path).records
    assert rec.status is Status.OK and len(rec.attempts) == 1
    assert len(fake.chat_requests()) == 2


def test_a_hang_past_the_timeout_is_retried(fake: FakeLLM, tmp_path: Path) -> None:
    # the hung request consumes the next step when it wakes; the retry gets the last one
    fake.script = [("hang", 3.0), ("answer", "late"), ("answer", answer(GOOD))]
    (rec,) = search(fake, tmp_path, llm_timeout_s=1.0).records
    assert rec.status is Status.OK and rec.code == GOOD
    assert rec.usage is not None and rec.usage.latency_s >= 1.0


def test_an_endpoint_that_stays_down_stops_the_run_cleanly_then_resumes(
    fake: FakeLLM, tmp_path: Path
) -> None:
    fake.script = [("answer", answer(GOOD))]  # then 503 forever
    run_dir = create_run(config(fake, iterations=2), tmp_path / "runs")
    result = run_search(run_dir)
    assert result.stop_reason.startswith("llm_unavailable") and "503" in result.stop_reason
    assert len(result.records) == 1
    with RunStore.open(run_dir) as st:
        assert st.status()[0] == "stopped"
    fake.script = [("answer", answer(GOOD.replace("WEIGHT_DECAY = 0.0", "WEIGHT_DECAY = 1e-4")))]
    resumed = run_search(run_dir)
    assert resumed.stop_reason == "iterations" and len(resumed.records) == 2


def test_token_budget_and_prices(fake: FakeLLM, tmp_path: Path) -> None:
    fake.script = [("answer", answer(GOOD))] * 3
    prices = {"fake-model": (1000.0, 2000.0)}
    result = search(fake, tmp_path, iterations=3, max_tokens=1, prices=prices)
    assert result.stop_reason == "max_tokens" and len(result.records) == 1
    usage = result.records[0].usage
    assert usage is not None
    want = (usage.prompt_tokens * 1000 + usage.completion_tokens * 2000) / 1e6
    assert usage.cost_usd == pytest.approx(want)
    shown = runner.invoke(app, ["show", str(result.run_dir), "--json"])
    doc = json.loads(shown.stdout)
    assert doc["summary"]["llm_tokens"] == usage.total_tokens
    assert doc["summary"]["llm_cost_usd"] == pytest.approx(want)


def test_replay_rebuilds_the_same_candidates_without_the_server(tmp_path: Path) -> None:
    with serve() as fake:
        fake.script = [
            ("answer", answer(SHAPE_BUG)),
            ("answer", answer(GOOD)),
            ("answer", answer(GOOD.replace("16", "12"))),
        ]
        original = search(fake, tmp_path, iterations=2)
    # the server is gone; the replay needs nothing but the recording
    out = runner.invoke(
        app,
        ["run", "--llm", f"replay:{original.run_dir}", "--runs-dir", str(tmp_path / "replays")],
    )
    assert out.exit_code == 0, out.output
    (replay_dir,) = (tmp_path / "replays").iterdir()
    with RunStore.open(replay_dir) as st:
        replayed = st.iterations()
    assert [r.code for r in replayed] == [r.code for r in original.records]
    assert [[a.status for a in r.attempts] for r in replayed] == [
        [a.status for a in r.attempts] for r in original.records
    ]
    assert all(c.usage is not None and c.usage.replayed for r in replayed for c in r.calls)


def test_bad_llm_input_is_one_line_exit_2(tmp_path: Path) -> None:
    runs = ["--runs-dir", str(tmp_path / "runs")]
    cases = [
        (["--llm", "nosuch:model"], "unknown architect"),
        (["--llm", "openai:gpt-4o"], "OPENAI_API_KEY"),
        (["--llm", "ollama:x", "--set", 'base_url="http://127.0.0.1:9/v1"'], "cannot reach"),
        (["--llm", "ollama"], "name the model"),
        (["--llm", f"replay:{tmp_path}"], "not a run directory"),
        (["--llm", "gemini:gemini-x", "--set", "max_cost_usd=1"], "GEMINI_API_KEY"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["run", *runs, *args])
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], (args, result.output)
    assert not (tmp_path / "runs").exists()


def test_unknown_price_with_a_cost_budget_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    cfg = build_config({}, {"llm": "openai:some-new-model", "max_cost_usd": 1.0})
    with pytest.raises(ArchitectError, match="no price known"):
        create_architect(cfg.llm, config=cfg)


# -- extraction ------------------------------------------------------------------------


def test_extract_code_variants() -> None:
    assert answers.extract_code(answer(GOOD)) == GOOD
    assert answers.extract_code(GOOD) == GOOD  # an unfenced answer that is all code
    helper = "```python\nimport torch\n```\n" + answer(GOOD)
    assert answers.extract_code(helper) == GOOD  # only the block with Net counts
    with pytest.raises(answers.ExtractionError, match="no ```python"):
        answers.extract_code("Add a layer.")
    with pytest.raises(answers.ExtractionError, match="defines no"):
        answers.extract_code("```python\nx = 1\n```")
    with pytest.raises(answers.ExtractionError, match="2 times"):
        answers.extract_code(answer(GOOD + "\n" + GOOD))


def test_doctor_checks_the_endpoint_and_never_shows_the_key(fake: FakeLLM) -> None:
    args = ["doctor", "--llm", "ollama:fake-model", "--set", f'base_url="{fake.base_url}"']
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["reachable"]["status"] == "ok"
    assert checks["api key"]["detail"] == "$OLLAMA_API_KEY is set"
    assert SECRET not in result.output
    down = ["doctor", "--llm", "ollama:m", "--set", 'base_url="http://127.0.0.1:9/v1"']
    failed = runner.invoke(app, down)
    assert failed.exit_code == 1 and "cannot reach" in failed.output
    unknown = runner.invoke(app, ["doctor", "--llm", "foo:bar", "--json"])
    rows = {c["check"]: c for c in json.loads(unknown.stdout)["checks"]}
    assert unknown.exit_code == 1 and "reachable" not in rows
    assert "unknown architect 'foo'" in rows["architect"]["detail"]


# -- prompt snapshots ------------------------------------------------------------------

SNAPSHOTS = Path(__file__).parent / "snapshots"


def _snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("UPDATE_SNAPSHOTS"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing snapshot {path}; run with UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(), f"{name} changed; rerun with UPDATE_SNAPSHOTS=1 if meant"


def _render_chat(chat: list[dict[str, str]]) -> str:
    return "".join(f"=== {m['role']} ===\n{m['content']}\n" for m in chat)


def test_prompt_snapshots() -> None:
    from lemo_nade.records import Metrics, ProposalRequest

    first = ProposalRequest(0, TASK, None, None, ())
    _snapshot("first.txt", _render_chat(prompts.messages(first, prompts.DEFAULT_INITIAL_COMMAND)))
    metrics = Metrics(A1=0.97, A2=0.9, E1=2.5e-4, E2=3e-7, F=15000.0, P=9978)
    later = ProposalRequest(
        3,
        TASK,
        GOOD,
        metrics,
        (("ADL", 0.9), ("ACL", 0.6), ("AR", 0.3)),
        last_error="training loss became NaN at epoch 2",
        history=((answer(SHAPE_BUG), "Net output is [2, 7]; expected [2, 10]"),),
        attempt=1,
    )
    _snapshot("iteration.txt", _render_chat(prompts.messages(later, "unused")))
    met = ProposalRequest(4, TASK, GOOD, metrics, ())
    assert "Every target is met" in prompts.messages(met, "x")[1]["content"]
