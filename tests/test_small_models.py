"""What makes a small model's answers usable, wired into a real run against the scripted
server: one instruction per prompt (``max_instructions``), asked as one change, judged on
what was asked; a retry after an unchanged answer sampled at ``retry_temperature``; the
prompt's edit quoting the parent's own lines (tests/test_hints.py has the edits)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from candidates import SMALL_CNN
from fake_llm import serve
from lemo_nade import prompts
from lemo_nade.answers import read_answer
from lemo_nade.architects.proposals import proposal_from_answer
from lemo_nade.architects.sampling import call_seed, temperature
from lemo_nade.config import build_config
from lemo_nade.datasets import resolve_dataset
from lemo_nade.history import next_window
from lemo_nade.records import ProposalRequest, TaskSpec
from lemo_nade.rules import DESCRIPTIONS
from lemo_nade.runs import create_run
from lemo_nade.search import run_search
from lemo_nade.usage import LLMCall, Usage

pytest_plugins = ["sandbox_fixtures"]
WIDER = SMALL_CNN.replace("nn.Conv2d(1, 8,", "nn.Conv2d(1, 16,").replace(
    "nn.Linear(8 *", "nn.Linear(16 *"
)


def fenced(code: str) -> str:
    return f"```python\n{code}```"


def test_a_retry_after_an_unchanged_answer_is_sampled_warmer() -> None:
    task = resolve_dataset("digits", None)
    first = ProposalRequest(1, task, SMALL_CNN, None, (("ACL", 1.0),))
    assert temperature(first, 0.0, 0.7) == 0.0
    unchanged = ProposalRequest(
        1, task, SMALL_CNN, None, (("ACL", 1.0),), attempt=1,
        history=((fenced(SMALL_CNN), "the code is the current model, unchanged; change it"),),
    )  # fmt: skip
    assert temperature(unchanged, 0.0, 0.7) == 0.7
    assert temperature(unchanged, 1.2, 0.7) == 1.2  # never cooler than asked
    broken = ProposalRequest(
        1, task, SMALL_CNN, None, (("ACL", 1.0),), attempt=1,
        history=(("```python\nx(\n```", "SyntaxError: '(' was never closed"),),
    )  # fmt: skip
    assert temperature(broken, 0.0, 0.7) == 0.0  # a repair of an error stays deterministic
    assert temperature(broken, 0.0, 0.7, resample=True) == 0.7  # the first prompt again
    assert temperature(first, 0.0, 0.7, resample=True) == 0.0  # the first answer stays at 0
    # after a failed iteration the same prompt comes again: its first answer is warmer
    after_failure = replace(first, last_error="the code creates layers that forward never uses")
    assert temperature(after_failure, 0.0, 0.7) == 0.7
    assert temperature(replace(broken, last_error="x"), 0.0, 0.7) == 0.0  # its repairs not
    # a question an earlier iteration asked (same parent, same instructions) likewise
    assert temperature(replace(first, asked_before=True), 0.0, 0.7) == 0.7
    assert temperature(replace(broken, asked_before=True), 0.0, 0.7) == 0.0


def test_each_call_has_its_own_seed() -> None:
    task = resolve_dataset("digits", None)
    requests = [ProposalRequest(i, task, SMALL_CNN, None, (), seed=7, attempt=a)
                for i in range(3) for a in range(3)]  # fmt: skip
    seeds = [call_seed(r) for r in requests]
    assert len(set(seeds)) == 9 and call_seed(requests[0]) == 7


@pytest.mark.usefixtures("shared_sandbox")
def test_one_instruction_per_prompt_is_asked_stored_and_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``max_instructions = 1`` the second iteration asks for Algorithm 3's first
    instruction only, as one change with its concrete edit; the first answer repeats the
    parent and the retry asks for the next instruction at ``retry_temperature``; the
    verdicts cover what the trained attempt was asked."""
    monkeypatch.setenv("OLLAMA_API_KEY", "unused")
    with serve() as fake:
        fake.script = [("answer", fenced(SMALL_CNN)), ("answer", fenced(SMALL_CNN)),
                       ("answer", fenced(WIDER))]  # fmt: skip
        flags = {"llm": "ollama:fake-model", "base_url": fake.base_url, "iterations": 2,
                 "epochs": 1, "max_instructions": 1, "setting": 1, "dataset": "digits",
                 "search": "paper"}  # fmt: skip
        run_dir = create_run(build_config({}, flags), tmp_path / "runs")
        first, second = run_search(run_dir).records
        bodies = [r["body"] for r in fake.chat_requests()]
    assert len(first.resolved_instructions) > 1, "setting 1 on 1 epoch asks for several"
    # asked the first; the unchanged answer moved the retry on to the second
    assert second.prompt_instructions == first.resolved_instructions[1:2]
    asked = bodies[1]["messages"][-1]["content"]
    assert "Make this one change:" in asked and "(priority" not in asked
    assert [b["temperature"] for b in bodies] == [0.0, 0.0, 0.7]
    assert len(second.evaluation.compliance) == 1
    assert second.evaluation.compliance[0].code == first.resolved_instructions[1][0]


def test_an_answer_that_repeats_a_failed_attempt_is_not_built_again() -> None:
    """The local model answered a repair with the failing code, word for word, twice."""
    task = resolve_dataset("digits", None)
    broken = SMALL_CNN.replace("return self.head", "x = self.conv(x)\n        return self.head")
    error = 'File "candidate.py", line 16, in forward\nValueError: expected 4D input (got 2D input)'
    request = ProposalRequest(
        1, task, SMALL_CNN, None, (("ACL", 1.0),), attempt=1,
        history=((fenced(broken), error),),
    )  # fmt: skip
    call = LLMCall(1, 1, Usage(calls=1), None, {})
    again = proposal_from_answer(fenced("# fixed\n" + broken), "stop", Usage(), call, request)
    assert again.code == "" and again.rejected is not None
    assert again.rejected.startswith("the code is the same as an earlier attempt (attempt 0)")
    assert error in again.rejected
    retry = replace(
        request, attempt=2, history=(*request.history, (fenced(broken), again.rejected))
    )
    assert temperature(retry, 0.0, 0.7) == 0.7
    fixed = proposal_from_answer(fenced(SMALL_CNN.replace("8 * 4", "8*4 + 0")), "stop", Usage(),
                                 call, retry)  # fmt: skip
    assert fixed.code and fixed.rejected is None


@pytest.mark.usefixtures("shared_sandbox")
def test_after_an_unchanged_answer_the_next_instruction_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Iteration 1 answers its parent unchanged three times: each retry asks for the next
    instruction, and the iteration fails; iteration 2, from the same parent, goes on from
    the last one asked instead of asking the first again."""
    monkeypatch.setenv("OLLAMA_API_KEY", "unused")
    with serve() as fake:
        fake.script = [("answer", fenced(SMALL_CNN))] * 4 + [("answer", fenced(WIDER))]
        flags = {"llm": "ollama:fake-model", "base_url": fake.base_url, "iterations": 3,
                 "epochs": 1, "max_instructions": 1, "setting": 1, "dataset": "digits",
                 "search": "paper"}  # fmt: skip
        run_dir = create_run(build_config({}, flags), tmp_path / "runs")
        first, failed, second = run_search(run_dir).records
        asked = [r["body"]["messages"][1]["content"] for r in fake.chat_requests()[1:4]]
    resolved = first.resolved_instructions
    assert len(resolved) >= 3, resolved
    for prompt, (code, _value) in zip(asked, resolved, strict=False):
        assert f"Make this one change: {DESCRIPTIONS[code]}" in prompt
    assert failed.status.value == "failed_extract" and failed.prompt_instructions == resolved[2:3]
    assert second.prompt_instructions == next_window(resolved[2:3], resolved, 1)
    assert second.parent_idx == 0


def test_a_layer_created_and_left_uncalled_is_taken_with_the_kept_call_or_sent_back() -> None:
    """The local 0.5B model's real answer (tests/answers/qwen_iter_unused.md): asked for
    a conv layer and a skip connection, it created ``self.res`` and kept forward's mark
    ``# TODO: add here: x = x + self.res(x)`` as a comment, three times at temperature 0.
    The answer means that call: it is written, and the candidate has its skip connection
    (the conv layer, never written, is not). The same answer without the mark would train
    as its parent with dead weights: it is sent back, naming the layer and the fix."""
    text = (Path(__file__).parent / "answers" / "qwen_iter_unused.md").read_text()
    task = resolve_dataset("shifted-digits", None)
    parent = prompts.skeleton(task)  # the model's first answer was the skeleton, as given
    request = ProposalRequest(1, task, parent, None, (("ACL", 1.0), ("ASC", 1.0)))
    call = LLMCall(1, 0, Usage(calls=1), None, {})
    taken = proposal_from_answer(text, "stop", Usage(), call, request)
    assert taken.rejected is None
    assert "x = self.features(x)\n        x = x + self.res(x)\n" in taken.code
    assert "x + self.res(x)` as code" in taken.notes
    # the quote of a kept mark still reaches the model where the mark is not written
    assert "kept the comment `# TODO: add here: x = x + self.res(x)`" in prompts.unused_text(
        ["res"], text
    )
    dropped = text.replace("        # TODO: add here: x = x + self.res(x)\n", "")
    sent_back = proposal_from_answer(dropped, "stop", Usage(), call, request)
    assert sent_back.code == "" and sent_back.rejected is not None
    assert "`self.res`" in sent_back.rejected and "x = x + self.res(x)" in sent_back.rejected
    assert "kept the comment" not in sent_back.rejected
    # the same answer again is a repeat: the next attempt is sampled warmer and does not
    # see the exchange again
    history = ((dropped, sent_back.rejected),)
    repeated = proposal_from_answer(
        dropped, "stop", Usage(), call, replace(request, history=history)
    )
    assert repeated.rejected is not None and repeated.rejected.startswith(prompts.REPEATED)
    stuck = replace(request, attempt=2, history=(*history, (dropped, repeated.rejected)))
    assert temperature(stuck, 0.0, 0.7) == 0.7
    applied = text.replace(
        "x = self.features(x)\n", "x = self.features(x)\n        x = x + self.res(x)\n"
    )
    assert proposal_from_answer(applied, "stop", Usage(), call, request).rejected is None
    inherited = replace(request, parent_code=read_answer(text).code)
    again = text.replace("nn.Linear(32, 10)", "nn.Linear(32, 10, bias=False)")
    assert proposal_from_answer(again, "stop", Usage(), call, inherited).rejected is None


def test_the_parent_the_request_carries_is_what_a_dropped_layer_comes_back_from() -> None:
    answers = Path(__file__).parent / "answers"
    parent = (answers / "qwen_cifar_dropped.parent.py").read_text()
    task = TaskSpec("cifar10", (3, 32, 32), 10)
    request = ProposalRequest(5, task, parent, None, (("ADL", 1.0),))
    call = LLMCall(5, 0, Usage(calls=1), None, {})
    text = (answers / "qwen_cifar_dropped.md").read_text()
    taken = proposal_from_answer(text, "stop", Usage(), call, request)
    assert taken.rejected is None and "put back `self.res = " in taken.notes
    orphan = proposal_from_answer(text, "stop", Usage(), call, replace(request, parent_code=""))
    assert "put back" not in orphan.notes


def test_a_new_layer_never_called_is_removed_when_the_rest_is_a_change() -> None:
    """The local 0.5B model's real answer (tests/answers/qwen_cifar_unused_conv.md), asked
    for a conv layer and a skip connection: it wrote the skip connection (`self.res2`,
    created and called) and a `self.conv2` forward never calls, through both repairs.
    The skip connection is taken, the dead conv removed; without the skip connection
    the answer would be its parent plus dead weights, and is sent back as before."""
    answers = Path(__file__).parent / "answers"
    text = (answers / "qwen_cifar_unused_conv.md").read_text()
    parent = (answers / "qwen_cifar_dropped.parent.py").read_text()
    task = resolve_dataset("digits", None)
    request = ProposalRequest(4, task, parent, None, (("ACL", 1.0), ("ASC", 1.0)))
    call = LLMCall(4, 1, Usage(calls=1), None, {})
    taken = proposal_from_answer(text, "stop", Usage(), call, request)
    assert taken.rejected is None, taken.rejected
    assert "self.conv2" not in taken.code and "x = x + self.res2(x)" in taken.code
    assert "mended: removed `self.conv2 = nn.Conv2d(32, 32, kernel_size=3, p...`" in taken.notes
    only_dead = text.replace("        x = x + self.res2(x)\n", "").replace(
        "        self.res2 = nn.Sequential(nn.Conv2d(32, 32, kernel_size=3, padding=1), "
        "nn.BatchNorm2d(32), nn.ReLU())  # skip connection with priority 1\n",
        "",
    )
    assert only_dead != text
    sent_back = proposal_from_answer(only_dead, "stop", Usage(), call, request)
    assert sent_back.code == "" and sent_back.rejected is not None
    assert "`self.conv2`" in sent_back.rejected
