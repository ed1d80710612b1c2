"""Answers read for what they mean (lemo_nade.answers, lemo_nade.tidy), on real answers.

The fixtures in tests/answers/ are answers of a real local model (Qwen2.5-Coder-0.5B
through llama.cpp, asked with the project's own prompts) and hand-made answers that
reproduce its failures; tests/answers/README.md says where each one comes from.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lemo_nade.answers import (
    CUT_BEFORE_CODE,
    CUT_IN_NET,
    ExtractionError,
    extract_code,
    read_answer,
    strip_reasoning,
)
from lemo_nade.records import Status
from lemo_nade.sandbox.policy import check

pytest_plugins = ["sandbox_fixtures"]
ANSWERS = Path(__file__).parent / "answers"
DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True)
class Case:
    finish: str  # the completion's finish_reason
    removed: tuple[str, ...] = ()  # what the note must name
    untidy: bool = False  # the untidied code fails the policy only for its untidiness


CASES = {
    # real answers of Qwen2.5-Coder-0.5B
    "qwen_old_first_divmod.md": Case(
        "stop",
        (
            "`from operator import add, sub, mul, floordiv, pow, divmod` (line 13)",
            "`from torch.utils.data import DataLoader` (line 4)",
            "`import torch.optim as optim` (line 3)",
        ),
        untidy=True,  # the unused DataLoader import alone had it refused
    ),
    "qwen_old_first.md": Case(
        "stop",
        (
            "removed unused imports: `import torch.optim as optim` (line 3), "
            "`from collections import defaultdict` (line 5)",
        ),
    ),
    "qwen_first_clean.md": Case("stop"),
    "qwen_iter_dense.md": Case("stop"),
    "qwen_old_iter.md": Case("stop"),
    # hand-made, reproducing what the model did in earlier runs
    "handmade_divmod.md": Case("stop", ("removed unused import: `from operator import divmod`",)),
    "handmade_main_block.md": Case(
        "stop",
        (
            "`if __name__ == '__main__':` block (lines 34-38)",
            "`model = Net()` (line 31)",
            "`print(model)` (line 32)",
            "`torch.manual_seed(0)` (line 9)",
        ),
        untidy=True,
    ),
    "handmade_think.md": Case("stop"),
    "handmade_cut_in_main.md": Case(
        "length", ("dropped the unfinished end of the cut-off answer (line 16 on)",)
    ),
}
# Answers that hold no usable code, with the finish reason and the rejection.
REJECTED = {
    "qwen_first_cut.md": ("length", CUT_IN_NET),  # cut at `return`: parses, but unfinished
    "qwen_old_first_loop.md": ("length", CUT_BEFORE_CODE),  # an import loop, no Net
    "qwen_repair_imports_only.md": ("stop", "the code defines no `class Net(nn.Module)`"),
    "handmade_cut_in_net.md": ("length", CUT_IN_NET),
}


# Answers with slips whose meaning is plain (and the prompt's TODO marks copied into
# the class): the input shape they are built for and what the note must say. Each one
# failed as the model gave it: a layer never called, a syntax error, a channel mismatch.
MARKED = {
    "qwen_iter_unused.md": ((1, 16, 16), (
        "mended: wrote the kept comment `# TODO: add here: x = x + self.res(x)` as code",
        "removed the prompt's 2 TODO comments",
    )),
    "qwen_cifar_channels.md": ((3, 32, 32), (
        "mended: made `nn.Conv2d` on line 16 read 32 channels (it said 16, and the layer "
        "before it in the nn.Sequential gives 32)",
        "removed the prompt's 6 TODO comments",
    )),
    "qwen_cifar_pasted.md": ((3, 32, 32), (
        "mended: removed `self.res = nn.Sequential(nn.Conv2d(32, 32, kern...` from inside a "
        "call on line 17: it is on line 22",
        "removed the prompt's 4 TODO comments",
    )),
    "qwen_cifar_pasted_alone.md": ((3, 32, 32), (
        "mended: moved `self.hidden = nn.Sequential(nn.Linear(32, 32), ...` out of the call "
        "it was pasted into (line 18)",
        "mended: wrote the kept comment `# TODO: add here: x = self.hidden(x)` as code",
        "removed the prompt's 1 TODO comment",
    )),
    "qwen_cifar_marks_in_call.md": ((3, 32, 32), (
        "mended: wrote the kept comment `# TODO: add here: self.res3 = nn.Sequential(",
        "removed the prompt's 6 TODO comments",
        "removed unused import: `import torch.nn.functional as F`",
    )),
}  # fmt: skip


DROPPED = "qwen_cifar_dropped.md"  # with the parent it edits, qwen_cifar_dropped.parent.py
UNUSED = "qwen_cifar_unused_conv.md"  # the same parent; tests/test_small_models.py
UNCLOSED = "qwen_digits_unclosed.md"  # with its parent, qwen_digits_unclosed.parent.py


def fixture(name: str) -> str:
    return (ANSWERS / name).read_text()


def top_level_is_definitions(code: str) -> bool:
    """Only imports, defs, classes, a docstring and constant assignments at top level."""
    tree = ast.parse(code)
    for i, node in enumerate(tree.body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        constant = isinstance(node, ast.Assign | ast.AnnAssign) and not any(
            isinstance(n, ast.Call) for n in ast.walk(node)
        )
        if not (isinstance(node, DEFINITIONS) or docstring or constant):
            return False
    return True


def test_every_fixture_is_small_and_listed() -> None:
    names = {p.name for p in ANSWERS.iterdir() if p.suffix in (".md", ".txt")} - {"README.md"}
    listed = set(CASES) | set(REFUSED) | set(REJECTED) | set(MARKED)
    assert names == listed | {DROPPED, UNUSED, UNCLOSED}
    readme = fixture("README.md")
    for name in names:
        assert (ANSWERS / name).stat().st_size < 8192, name
        assert name in readme, f"{name} is not described in tests/answers/README.md"


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixtures_become_tidy_candidates(name: str) -> None:
    case = CASES[name]
    text = fixture(name)
    candidate = read_answer(text, case.finish)
    tree = ast.parse(candidate.code)
    nets = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Net"]
    assert len(nets) == 1
    assert top_level_is_definitions(candidate.code), candidate.code
    assert check(candidate.code) is None, check(candidate.code)
    for needle in case.removed:
        assert needle in candidate.note, candidate.note
    assert bool(candidate.note) == bool(case.removed)
    if case.untidy:
        refused = check(extract_code(text))
        assert refused is not None and refused[0] is Status.FAILED_POLICY
    # what is inside the class is untouched, byte for byte
    segment = ast.get_source_segment(candidate.code, nets[0])
    assert segment is not None and segment in text


@pytest.mark.parametrize("name", sorted(MARKED))
def test_slips_are_mended_and_the_prompts_todo_marks_removed(name: str) -> None:
    shape, notes = MARKED[name]
    candidate = read_answer(fixture(name), "stop")
    assert "# TODO:" not in candidate.code and check(candidate.code) is None
    parts = candidate.note.split("; ")
    assert len(parts) == len(notes), parts
    assert all(part.startswith(note) for part, note in zip(parts, notes, strict=True)), parts
    assert net_output(fixture(name)) is None, "the answer as given fails"
    assert net_output(candidate.code, shape) == [2, 10]


def test_a_parents_layer_the_answer_still_calls_is_put_back() -> None:
    """The model wrote its new `self.hidden` line over the parent's `self.res` line and
    kept `x = x + self.res(x)` (tests/answers/qwen_cifar_dropped.md, on the parent
    beside it); it also copied forward's `self.hidden` mark twice."""
    parent = fixture("qwen_cifar_dropped.parent.py")
    alone = read_answer(fixture(DROPPED), "stop")
    assert net_output(alone.code) is None  # 'Net' object has no attribute 'res'
    candidate = read_answer(fixture(DROPPED), "stop", parent=parent)
    assert net_output(candidate.code) == [2, 10]
    assert candidate.code.count("self.res = nn.Sequential(") == 1
    assert candidate.code.count("x = self.hidden(x)") == 1
    assert (
        "mended: put back `self.res = nn.Sequential(nn.Conv2d(32, 32, kern...` from the "
        "parent: the code reads `self.res` and no longer creates it" in candidate.note
    )
    assert check(candidate.code) is None


def test_a_call_left_open_is_closed_where_the_indentation_returns() -> None:
    """The model wrote a TODO comment over the last line of `self.features`, its `)`
    included (tests/answers/qwen_digits_unclosed.md): a syntax error in all three
    attempts of a real iteration, the repairs keeping the comment."""
    assert net_output(fixture(UNCLOSED), (1, 16, 16)) is None  # '(' was never closed
    candidate = read_answer(
        fixture(UNCLOSED), "stop", parent=fixture("qwen_digits_unclosed.parent.py")
    )
    assert net_output(candidate.code, (1, 16, 16)) == [2, 10]
    assert candidate.note.startswith(
        "mended: closed `self.features = nn.Sequential(`, left open, before `self.pool = "
    )
    assert "        )\n        self.pool = nn.AdaptiveAvgPool2d(1)" in candidate.code
    assert check(candidate.code) is None


def net_output(code: str, shape: tuple[int, ...] = (3, 32, 32)) -> list[int] | None:
    """The output shape of ``Net`` on a batch of 2 (a fixture: trusted code), or None when
    the code does not build or run."""
    code = extract_code(code) if "```" in code else code
    namespace: dict[str, object] = {}
    try:
        exec(compile(code, "fixture.py", "exec"), namespace)
        return list(namespace["Net"]()(torch.zeros(2, *shape)).shape)  # type: ignore[operator]
    except (SyntaxError, RuntimeError, NotImplementedError, AttributeError):
        return None


def test_the_unused_hallucinated_import_no_longer_fails_at_load() -> None:
    text = fixture("handmade_divmod.md")
    with pytest.raises(ImportError, match="divmod"):
        exec(compile(extract_code(text), "candidate", "exec"), {})  # the failure (a)
    namespace: dict[str, object] = {}
    exec(compile(read_answer(text).code, "candidate", "exec"), namespace)
    import torch

    net = namespace["Net"]()  # type: ignore[operator]
    assert tuple(net(torch.zeros(2, 1, 8, 8)).shape) == (2, 10)


# ---- dangerous answers stay refused ----------------------------------------------------

REFUSED = {
    "handmade_dangerous.md": "import of 'os' is not allowed",
    "handmade_open.md": "'open' is not allowed",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_tidying_launders_nothing(name: str) -> None:
    text = fixture(name)
    candidate = read_answer(text)
    refused = check(candidate.code)
    assert refused is not None and refused[0] is Status.FAILED_POLICY
    assert REFUSED[name] in refused[1]
    assert candidate.note.startswith("removed top-level code")  # the test code went
    net = next(
        n for n in ast.parse(candidate.code).body if isinstance(n, ast.ClassDef) and n.name == "Net"
    )
    assert ast.get_source_segment(candidate.code, net) in text  # Net's body as written


# ---- reasoning, fences ---------------------------------------------------------------

GOOD = "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    pass\n"


@pytest.mark.parametrize(
    "answer",
    [
        f"<think>\nI need a Net.\n</think>\n```python\n{GOOD}```",
        f"<THINKING>plan: ```python\nclass Net:\n    pass\n```</THINKING>\n```python\n{GOOD}```",
        f"<reasoning>short</reasoning>Here:\n```py\n{GOOD}```\nDone.",
        f"the template opened the block\n</think>\n\n```python\n{GOOD}```",
        f"```python3\n{GOOD}```",
        f"```Python\n{GOOD}```",
        f"```\n{GOOD}```",
        f"~~~python\n{GOOD}~~~",
        f"~~~~\n{GOOD}~~~~\n",
        "1. The code:\n   ```python\n" + textwrap.indent(GOOD, "   ") + "   ```",
        f"```python\n{GOOD}",  # the closing fence is missing
        f"```python\n{GOOD}```\n".replace("\n", "\r\n"),
        f"Here is the code.\n\n{GOOD}",  # no fences, prose before
        f"{GOOD}\nThis network has no layers yet.\n",  # no fences, prose after
        f"```bash\npip install torch\n```\n```python\nx = Net()\n```\n```python\n{GOOD}```",
    ],
)
def test_the_code_is_found_whatever_the_form(answer: str) -> None:
    assert read_answer(answer).code == GOOD


def test_reasoning_blocks_are_dropped() -> None:
    assert strip_reasoning("<think>a</think>b<thinking>c</thinking>d") == "bd"
    assert strip_reasoning("<think>still thinking when the tokens ran out") == ""
    assert strip_reasoning("x\n</think>\ny") == "\ny"
    with pytest.raises(ExtractionError, match="only reasoning"):
        read_answer("<think>\n```python\n" + GOOD + "```\nmaybe more layers")


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        ("Add a layer.", "no ```python"),
        ("```python\nx = 1\n```", "defines no"),
        (f"```python\n{GOOD}```\nor\n```python\n{GOOD}```", "2 code blocks"),
        (f"```python\n{GOOD}\n{GOOD}```", "2 times"),
        ("The class Net should\nclass Net is a model with layers\n", "no ```python"),
    ],
)
def test_answers_without_one_net_are_refused(answer: str, needle: str) -> None:
    with pytest.raises(ExtractionError, match=needle):
        read_answer(answer)


def test_a_syntax_error_is_passed_on_unchanged() -> None:
    broken = (
        "import torch\n\n\nclass Net(torch.nn.Module):\n"
        "    def forward(self, x):\n        return x +\n"
    )
    candidate = read_answer(f"```python\n{broken}```")
    assert candidate.code == broken and candidate.note == ""
    refused = check(candidate.code)
    assert refused is not None and refused[0] is Status.FAILED_SYNTAX


# ---- answers cut off at max_tokens -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_answers_without_usable_code_say_why(name: str) -> None:
    finish, reason = REJECTED[name]
    with pytest.raises(ExtractionError) as caught:
        read_answer(fixture(name), finish)
    assert str(caught.value).startswith(reason)
    if finish == "length":
        assert "shorter complete version" in reason and "no test code" in reason


def test_a_cut_before_any_code_asks_for_a_shorter_version() -> None:
    for answer in ("Let me explain the design first. The first layer", "<think>\nFirst,"):
        with pytest.raises(ExtractionError) as caught:
            read_answer(answer, "length")
        assert str(caught.value) == CUT_BEFORE_CODE


def test_complete_code_in_a_cut_answer_is_used() -> None:
    closed = f"```python\n{GOOD}```\nThis model works as follows: first the"
    assert read_answer(closed, "length").code == GOOD
    unclosed_net_last = f"```python\n{GOOD}"  # maybe cut inside Net: not used
    with pytest.raises(ExtractionError, match="inside `class Net`"):
        read_answer(unclosed_net_last, "length")
    assert read_answer(unclosed_net_last, "stop").code == GOOD  # the fence was forgotten
    half_fence = read_answer(f"```python\n{GOOD}``", "length")  # cut in the closing fence
    assert half_fence.code == GOOD and "line 7 on" in half_fence.note
    looping = f"```python\n{GOOD}```\nAgain:\n```python\n{GOOD[:50]}"  # a repeat, cut
    assert read_answer(looping, "length").code == GOOD
    with pytest.raises(ExtractionError, match="2 code blocks"):
        read_answer(looping, "stop")  # not cut: two different versions
