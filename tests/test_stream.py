"""Answers streamed (lemo_nade.architects.stream): a looping answer stopped early and sent
back, the usage the endpoint reports, a stream that breaks off, and ``llm_stream = false``
for an endpoint that cannot stream. Through the real SDK against the scripted server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_llm import FakeLLM, serve
from lemo_nade import prompts
from lemo_nade.architects.stream import LOOP, looping
from lemo_nade.records import Status
from lemo_nade.store import RunStore
from test_llm import GOOD, answer, config

pytest_plugins = ["sandbox_fixtures"]
ANSWERS = Path(__file__).parent / "answers"
LOOP_LINE = "from torch.nn import functional as F\n"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    monkeypatch.setenv("OLLAMA_API_KEY", "unused")
    with serve() as server:
        yield server


def run(fake: FakeLLM, tmp_path: Path, **extra: Any) -> tuple[Any, dict[str, Any]]:
    from lemo_nade.runs import create_run
    from lemo_nade.search import run_search

    run_dir = create_run(config(fake, **extra), tmp_path / "runs")
    (record,) = run_search(run_dir).records
    with RunStore.open(run_dir) as store:
        calls = [c.payload for c in store.llm_calls()]
    return record, {"calls": calls}


def test_a_loop_is_seen_early_and_code_written_once_is_not() -> None:
    assert looping("import torch\n" + LOOP_LINE * 25)
    assert not looping("import torch\n" + LOOP_LINE * 3)
    for name in ("qwen_first_clean.md", "qwen_iter_dense.md", "qwen_iter_unused.md"):
        assert not looping((ANSWERS / name).read_text()), name
    assert not looping(answer(GOOD))
    # the 0.5B model's real loop (one import line until max_tokens): seen at 44% of it
    real = (ANSWERS / "qwen_old_first_loop.md").read_text()
    seen = next(n for n in range(0, len(real), 8) if looping(real[:n]))
    assert seen < len(real) / 2
    block = "        nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),\n"
    assert not looping(block * 4) and looping(block * 12)
    # counting: self.res4, self.res5, ... (the local model went on to self.res84)
    res = "        self.res{} = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1))\n"
    counting = "".join(res.format(n) for n in range(4, 85))
    seen = next(n for n in range(0, len(counting), 8) if looping(counting[:n]))
    assert seen < len(counting) / 3  # after about 23 of its 81 lines
    # six blocks written out, each with its own sizes: not a loop
    widths = [(3, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 128)]
    blocks = "".join(f"        nn.Conv2d({i}, {o}, 3, padding=1), nn.BatchNorm2d({o}), "
                     f"nn.ReLU(),\n" for i, o in widths)  # fmt: skip
    assert not looping(answer(GOOD.replace("nn.Flatten(),", blocks + "nn.Flatten(),")))


@pytest.mark.usefixtures("shared_sandbox")
def test_a_looping_answer_is_stopped_sent_back_and_retried_warmer(
    fake: FakeLLM, tmp_path: Path
) -> None:
    looped = "```python\nimport torch\n" + LOOP_LINE * 400
    fake.script = [("answer", looped), ("answer", answer(GOOD))]
    record, seen = run(fake, tmp_path)
    assert [a.status for a in record.attempts] == [Status.FAILED_EXTRACT, Status.OK]
    error = record.attempts[0].error or ""
    assert error.startswith(prompts.LOOPED) and "from torch.nn import functional as F" in error
    first, second = (r["body"] for r in fake.chat_requests())
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    assert second["temperature"] == 0.7  # retry_temperature: at 0 it would loop again
    recorded = seen["calls"][0]["response"]
    assert recorded["finish_reason"] == LOOP
    assert len(recorded["text"]) < len(looped) / 4  # stopped reading, not cut at the end
    assert record.code == GOOD and record.usage is not None
    assert record.usage.completion_tokens > 0 and record.usage.prompt_tokens > 0


@pytest.mark.usefixtures("shared_sandbox")
def test_a_streamed_answer_keeps_the_reported_usage(fake: FakeLLM, tmp_path: Path) -> None:
    fake.script = [("answer", answer(GOOD))]
    record, _ = run(fake, tmp_path)
    text = answer(GOOD)
    assert record.status is Status.OK and record.usage is not None
    # the fake server's counts, not this side's estimate
    assert record.usage.completion_tokens == len(text) // 4
    assert record.usage.prompt_tokens == 100 + len(text) // 10


@pytest.mark.usefixtures("shared_sandbox")
def test_a_stream_that_breaks_off_fails_the_attempt_not_the_run(
    fake: FakeLLM, tmp_path: Path
) -> None:
    fake.script = [("raw", '{"error": {"message": "slot crashed"}}'), ("answer", answer(GOOD))]
    record, _ = run(fake, tmp_path)
    assert [a.status for a in record.attempts] == [Status.FAILED_EXTRACT, Status.OK]
    assert "broke off" in (record.attempts[0].error or "")
    assert "slot crashed" in (record.attempts[0].error or "")


@pytest.mark.usefixtures("shared_sandbox")
def test_streaming_can_be_turned_off(fake: FakeLLM, tmp_path: Path) -> None:
    fake.script = [("answer", answer(GOOD))]
    record, _ = run(fake, tmp_path, llm_stream=False)
    assert record.status is Status.OK
    assert "stream" not in fake.chat_requests()[0]["body"]
