"""``bench/llm.py``: what it reports for a scripted endpoint (real HTTP, the real CLI),
and the whole loop against a real local model when one is serving (skipped otherwise;
never in CI's required path: set ``LEMO_NADE_LLM_URL``, e.g. to the address
``../shared/tools/local-llm-serve PORT`` serves)."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

from fake_llm import FakeLLM, serve
from lemo_nade.architects.offline.arch import initial
from lemo_nade.architects.offline.render import render
from lemo_nade.records import TaskSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import llm as bench_llm

TASK = TaskSpec("digits", (1, 8, 8), 10)
GOOD = render(initial(TASK), TASK)
SHAPE_BUG = GOOD.replace(", 10)", ", 7)")
UNTIDY = (
    GOOD.replace("WEIGHT_DECAY = 0.0", "WEIGHT_DECAY = 1e-4")
    + '\n\nif __name__ == "__main__":\n    print(Net())\n'
)

SLIP = GOOD.replace("WEIGHT_DECAY = 0.0", "WEIGHT_DECAY = 1e-3").replace(
    "nn.BatchNorm2d(32)", "nn.BatchNorm2d(24)"
)  # the conv before it gives 32 channels: mended


def _answer(code: str) -> str:
    return f"Here it is.\n\n```python\n{code}```\n"


def _bench(base_url: str, model: str, tmp_path: Path, iterations: int) -> dict:
    out = tmp_path / "bench.json"
    code = bench_llm.main(
        ["--base-url", base_url, "--model", model, "--iterations", str(iterations),
         "--epochs", "1", "--runs-dir", str(tmp_path / "runs"), "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    (case,) = json.loads(out.read_text())["cases"]
    return case


def test_the_bench_counts_attempts_repairs_and_tidied_answers(tmp_path: Path) -> None:
    fake: FakeLLM
    with serve() as fake:
        fake.script = [
            ("answer", _answer(SHAPE_BUG)),  # iteration 0: a shape bug, then its repair
            ("answer", _answer(GOOD)),
            ("answer", _answer(UNTIDY)),  # iteration 1: trains once tidied
            ("answer", _answer(SLIP)),  # iteration 2: trains once mended
        ]
        case = _bench(fake.base_url, "fake-model", tmp_path, iterations=3)
    assert case["iterations"] == 3 and case["iterations_trained"] == 3, case
    assert case["iterations_trained_mended"] == 1
    assert case["attempts"] == 4 and case["attempts_trained"] == 3
    assert case["failures"] == {"failed_shape": 1}
    assert case["repairs_per_trained_iteration"] == pytest.approx(1 / 3)
    assert case["answers_tidied"] == 1
    assert case["prompt_tokens"] > 0 and case["seconds_per_answer_median"] is not None
    counts = case["instructions"]
    assert sum(counts.values()) >= 1  # iteration 1 was asked to change something


def test_an_endpoint_that_does_not_answer_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_llm.main(["--base-url", "http://127.0.0.1:9/v1", "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not answer" in err[0]


def _local_url() -> str | None:
    url = os.environ.get("LEMO_NADE_LLM_URL")
    if not url:
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=5):
            return url
    except OSError:
        return None


@pytest.mark.skipif(_local_url() is None, reason="no local LLM (set LEMO_NADE_LLM_URL)")
def test_the_whole_loop_against_the_local_model(tmp_path: Path) -> None:
    case = _bench(str(_local_url()), "qwen2.5-coder-0.5b", tmp_path, iterations=1)
    assert case["run_status"] == "finished", case
    assert case["attempts"] >= 1 and case["iterations_trained"] == 1, case
