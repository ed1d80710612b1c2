"""Answers read for what they mean, wired into the architects: live and replayed
answers, an answer that repeats its parent, a repair of only import lines, forgotten
imports, and an untidy answer trained end to end (see tests/test_answers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lemo_nade.answers import CUT_IN_NET, ExtractionError, read_answer
from lemo_nade.architects.llm import proposal_from_answer
from lemo_nade.architects.replay import ReplayArchitect
from lemo_nade.datasets import resolve_dataset
from lemo_nade.records import ProposalRequest, Status
from lemo_nade.sandbox.policy import check
from lemo_nade.usage import LLMCall, Usage

pytest_plugins = ["sandbox_fixtures"]
ANSWERS = Path(__file__).parent / "answers"


def fixture(name: str) -> str:
    return (ANSWERS / name).read_text()


# ---- wiring: live and replayed answers -------------------------------------------------


def test_the_architects_propose_the_tidied_code_with_the_note() -> None:
    text = fixture("handmade_main_block.md")
    call = LLMCall(
        0, 0, Usage(calls=1), None, {"response": {"text": text, "finish_reason": "stop"}}
    )
    task = resolve_dataset("digits", None)
    first = ProposalRequest(0, task, None, None, ())
    live = proposal_from_answer(text, "stop", Usage(calls=1), call, first)
    expected = read_answer(text)
    assert (live.code, live.notes, live.answer, live.rejected) == (
        expected.code,
        expected.note,
        text,
        None,
    )
    replay = ReplayArchitect(Path("recorded"), [call], "start")
    replayed = replay.propose(first)
    assert (replayed.code, replayed.notes) == (expected.code, expected.note)
    cut = proposal_from_answer(fixture("handmade_cut_in_net.md"), "length", Usage(), call, first)
    assert cut.code == "" and cut.rejected == CUT_IN_NET


def test_an_answer_that_repeats_the_parent_is_sent_back_with_the_first_instruction() -> None:
    """A 0.5B model answered four iterations in a row with its parent's code."""
    task = resolve_dataset("digits", None)
    parent = "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    pass\n"
    request = ProposalRequest(3, task, parent, None, (("ASC", 0.9), ("ACL", 0.6)))
    call = LLMCall(3, 0, Usage(calls=1), None, {})
    same = "```python\n# the model\n" + parent.replace("\n\n\n", "\n\n") + "```"
    sent_back = proposal_from_answer(same, "stop", Usage(), call, request)
    assert sent_back.code == "" and sent_back.rejected is not None
    assert "unchanged" in sent_back.rejected and "Add skip connection" in sent_back.rejected
    changed = same.replace("    pass", "    WIDTH = 2")
    assert proposal_from_answer(changed, "stop", Usage(), call, request).code != ""
    # the model's one 'change' in a real run: the annotation `-> None` dropped
    annotated = parent.replace("    pass", "    def f(self, x: int) -> None:\n        return x")
    bare = "```python\n" + annotated.replace(" -> None", "").replace("x: int", "x") + "```"
    unchanged = ProposalRequest(3, task, annotated, None, (("ASC", 0.9),))
    assert "unchanged" in (
        proposal_from_answer(bare, "stop", Usage(), call, unchanged).rejected or ""
    )


@pytest.mark.usefixtures("shared_sandbox")
def test_an_untidy_answer_trains_in_a_real_run(tmp_path: Path) -> None:
    """The failure (b) end to end: the answer with a ``__main__`` block, once refused by
    the policy, trains at the first attempt, and the record says what was removed."""
    from fake_llm import serve
    from lemo_nade.config import build_config
    from lemo_nade.runs import create_run
    from lemo_nade.search import run_search

    with serve() as fake:
        fake.script = [("answer", fixture("handmade_main_block.md"))]
        flags = {"llm": "ollama:fake-model", "base_url": fake.base_url, "iterations": 1}
        flags |= {"promote": 0}  # the answer's candidate alone
        run_dir = create_run(
            build_config({}, {**flags, "epochs": 1, "dataset": "digits"}), tmp_path / "runs"
        )
        (rec,) = run_search(run_dir).records
    assert [a.status for a in rec.attempts] == [Status.OK], rec.attempts
    assert rec.code == read_answer(fixture("handmade_main_block.md")).code
    assert "`if __name__ == '__main__':` block (lines 34-38)" in rec.notes


def test_a_repair_of_only_import_lines_means_the_previous_code_with_them() -> None:
    """The local model answered a syntax error on an import line with the fixed import
    lines alone (tests/answers/qwen_repair_imports_only.md)."""
    previous = (
        "import torch\nfrom torch import nn, functional, torch.nn.functional as F\n\n\n"
        "class Net(nn.Module):\n    def forward(self, x):\n        return F.relu(x)\n"
    )
    answer = "```python\nimport torch\nfrom torch import nn\nimport torch.nn.functional as F\n```"
    candidate = read_answer(answer, previous=previous)
    assert candidate.code.startswith("import torch\nfrom torch import nn\nimport torch.nn.")
    assert "class Net(nn.Module):" in candidate.code and "functional, torch" not in candidate.code
    assert "only import lines" in candidate.note and check(candidate.code) is None
    with pytest.raises(ExtractionError):  # without the attempt it repairs: no Net
        read_answer(answer)
    with pytest.raises(ExtractionError):  # prose or other code is not a splice
        read_answer("```python\nx = 1\n```", previous=previous)


def test_an_import_the_code_uses_but_forgot_is_added() -> None:
    """The local model used math.sqrt without importing math (a NameError at build)."""
    code = (
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def forward(self, x):\n        return F.relu(x) * math.sqrt(2.0)\n"
    )
    candidate = read_answer(f"```python\n{code}```")
    assert candidate.code.startswith("import torch.nn.functional as F\nimport math\nimport torch")
    assert "added missing imports" in candidate.note and check(candidate.code) is None
    local = code.replace("return F.relu", "F = torch.nn.functional\n        return F.relu")
    assert "import torch.nn.functional as F" not in read_answer(f"```python\n{local}```").code
