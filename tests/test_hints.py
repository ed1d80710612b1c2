"""The concrete edits the prompts give per instruction (hints.py): on the two shapes of
code small models write (layers in an nn.Sequential; layers as attributes used one by one
in forward), each edit, carried out literally as its text says, gives a model that builds,
returns logits of the right shape, and that the instruction checker judges ``followed``.
Code it does not understand gets no edit, and the prompt falls back to the general how-to.
"""

from __future__ import annotations

import re

import pytest
import torch

from lemo_nade import hints, prompts
from lemo_nade.answers import read_answer
from lemo_nade.compliance import FOLLOWED, judge
from lemo_nade.programs import same_program
from lemo_nade.records import ProposalRequest, TaskSpec
from test_compliance import facts, module

SEQUENTIAL = """\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(16, 12),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(12, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x).flatten(1)
        return self.classifier(x)
"""

ATTRIBUTES = """\
import torch
from torch import nn
import torch.nn.functional as F

WEIGHT_DECAY = 0.001


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = x + F.relu(self.conv3(x))
        x = self.pool(x).flatten(1)
        return self.fc(x)
"""

ADD = ("ACL", "ASC", "ADL", "AMK", "AMN", "AD", "AWI", "AR")
REMOVE = ("RCL", "RDL", "RK", "RN", "RD", "RR")


def carry_out(code: str, edit: hints.Edit) -> str:
    """``code`` edited as the edit's TODO comments say, by text alone (what a model that
    copies the code it is shown has to do)."""
    lines = code.splitlines()
    inserts: list[tuple[int, list[str]]] = []  # (index, lines)
    gone: set[int] = set()
    for mark in edit.marks:
        n, text = mark.line, mark.text
        indent = re.match(r"\s*", lines[n - 1]).group(0)  # type: ignore[union-attr]
        if text.startswith("add here:"):
            new = text.removeprefix("add here:").strip().splitlines()
            inserts.append((n - 1 if mark.before else n, [indent + x for x in new]))
        elif text.startswith("change the next layer to: "):
            new = text.removeprefix("change the next layer to: ")
            lines[n - 1] = re.sub(r"nn\.\w+\(.*\)", new, lines[n - 1])
        elif text.startswith("change the next line to: "):
            lines[n - 1] = indent + text.removeprefix("change the next line to: ")
        elif text.startswith("delete the next"):
            extra = 2 if "BatchNorm2d and ReLU" in text else 1 if "activation" in text else 0
            gone |= set(range(n, n + extra + 1))
        elif text.startswith("drop the `+`"):
            lines[n - 1] = lines[n - 1].replace("x + ", "")
        else:
            raise AssertionError(f"no way to carry out: {mark}")
    for index, new in sorted(inserts, key=lambda item: item[0], reverse=True):
        lines[index:index] = new
        gone = {g + len(new) if g > index else g for g in gone}
    return "\n".join(s for i, s in enumerate(lines, 1) if i not in gone) + "\n"


@pytest.mark.parametrize("source", [SEQUENTIAL, ATTRIBUTES], ids=["sequential", "attributes"])
@pytest.mark.parametrize("code", ADD + REMOVE)
def test_each_edit_builds_and_is_followed(source: str, code: str) -> None:
    edit = hints.edit(source, code)
    if edit is None:
        # every instruction gets an edit on these parents except removing what is not there
        assert (code, source) in {("RDL", ATTRIBUTES), ("RN", ATTRIBUTES), ("RD", ATTRIBUTES)}
        return
    child = carry_out(source, edit)
    assert child != source, edit
    with torch.no_grad():
        assert module(child)(torch.zeros(2, 1, 8, 8)).shape == (2, 3), child
    (verdict,) = judge([(code, 1.0)], facts(source), facts(child))
    assert verdict.verdict == FOLLOWED, (edit, verdict.reason, child)


def test_a_second_skip_connection_gets_a_name_of_its_own() -> None:
    """Asked for a skip connection on a parent that had one, the prompt said `add
    self.res = ...` again (the local model then wrote a forward that called a layer
    it never created); the new block is `self.res2`."""
    once = carry_out(SEQUENTIAL, hints.edit(SEQUENTIAL, "ASC"))  # type: ignore[arg-type]
    edit = hints.edit(once, "ASC")
    assert edit is not None and "self.res2 = nn.Sequential(" in edit.text, edit
    assert "right after `x = x + self.res(x)`, add `x = x + self.res2(x)`" in edit.text
    twice = carry_out(once, edit)
    with torch.no_grad():
        assert module(twice)(torch.zeros(2, 1, 8, 8)).shape == (2, 3), twice
    (verdict,) = judge([("ASC", 1.0)], facts(once), facts(twice))
    assert verdict.verdict == FOLLOWED, (verdict.reason, twice)


def test_a_conv_block_for_a_one_line_sequential_is_the_whole_new_line() -> None:
    """A mark cannot go inside a one-line ``nn.Sequential``: placed after the line, the
    local model kept it there as a comment and answered its parent unchanged (4 of 10
    iterations of a shifted-digits run). The edit gives the line as it must read."""
    once = carry_out(SEQUENTIAL, hints.edit(SEQUENTIAL, "ASC"))  # type: ignore[arg-type]
    assert "self.res = nn.Sequential(nn.Conv2d(16, 16" in once  # the skip block: one line
    edit = hints.edit(once, "ACL")
    assert edit is not None
    block = "nn.Conv2d(16, 16, kernel_size=3, padding=1), nn.BatchNorm2d(16), nn.ReLU()"
    new = f"self.res = nn.Sequential({block}, {block})"
    assert edit.text == (
        f"add `{block}` at the end of `self.res`, after `nn.ReLU()`: make its line `{new}` "
        "(same 16 channels in and out, so nothing else changes)"
    )
    assert [m.text for m in edit.marks] == [f"change the next line to: {new}"]
    child = carry_out(once, edit)
    assert new in child
    with torch.no_grad():
        assert module(child)(torch.zeros(2, 1, 8, 8)).shape == (2, 3), child
    (verdict,) = judge([("ACL", 1.0)], facts(once), facts(child))
    assert verdict.verdict == FOLLOWED, (verdict.reason, child)


def test_edits_quote_the_parents_own_lines() -> None:
    assert hints.hint(SEQUENTIAL, "ACL") == (
        "right after `nn.ReLU()`, the last layer of `self.features`, add "
        "`nn.Conv2d(16, 16, kernel_size=3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),` "
        "(same 16 channels in and out, so nothing else changes)"
    )
    assert "`nn.Conv2d(1, 16, 3, padding=1)`" in hints.hint(ATTRIBUTES, "AMK")
    assert "`x = x + F.relu(self.conv3(x))`: drop the `+`" in hints.hint(ATTRIBUTES, "RSC")
    assert "`WEIGHT_DECAY = 0.01` (now 0.001)" in hints.hint(ATTRIBUTES, "AR")
    assert "`WEIGHT_DECAY = 0.0001` (now 0.001)" in hints.hint(ATTRIBUTES, "RR")
    # a parent with kaiming already is asked for another initialiser, which the checker sees
    inits = SEQUENTIAL.replace(
        "nn.ReLU(),\n        )",
        "nn.ReLU(),\n        )\n        nn.init.kaiming_normal_(self.features[0].weight)",
        1,
    )
    assert "xavier_uniform_" in hints.hint(inits, "AWI")


LOOPED = """\
import torch
from torch import nn

WIDTH = 16


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else WIDTH, WIDTH, 3) for i in range(3)])
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.head(x.mean((2, 3)))
"""


@pytest.mark.parametrize(
    "source", [LOOPED, "not python (", "class Other:\n    pass\n", ""], ids=str.__len__
)
def test_code_it_does_not_understand_gets_the_general_how_to(source: str) -> None:
    for code in ("ACL", "AMK", "RCL", "AMN", "ASC"):
        assert hints.hint(source, code) == ""
    request = ProposalRequest(0, TaskSpec("tiny", (1, 8, 8), 3), source, None, (("ACL", 1.0),))
    assert prompts.HOW_TO["ACL"] in prompts.iteration_prompt(request)


def test_the_prompt_and_the_unchanged_repair_carry_the_edit() -> None:
    request = ProposalRequest(0, TaskSpec("tiny", (1, 8, 8), 3), SEQUENTIAL, None, (("AD", 1.0),))
    edit = hints.hint(SEQUENTIAL, "AD")
    assert edit and edit in prompts.iteration_prompt(request)
    assert edit in prompts.unchanged_text(request)


@pytest.mark.parametrize("source", [SEQUENTIAL, ATTRIBUTES], ids=["sequential", "attributes"])
def test_the_parent_shown_is_marked_where_each_edit_goes(source: str) -> None:
    """The TODO comments leave the program as it was, sit next to the line they name,
    and carry the new code: what a model copying the code it is shown will come upon."""
    for code in ADD + REMOVE:
        edit = hints.edit(source, code)
        shown = hints.marked(source, [code])
        assert same_program(shown, source)
        if edit is None:
            assert shown == source
            continue
        lines = shown.splitlines()
        for mark in edit.marks:
            anchor = source.splitlines()[mark.line - 1]
            indent = anchor[: len(anchor) - len(anchor.lstrip())]
            todo = f"{indent}# TODO: {mark.text.splitlines()[0]}"
            at = [i for i, s in enumerate(lines) if s == todo]
            near = [lines[i + 1] if mark.before else lines[i - 1] for i in at]
            assert anchor in near, (code, mark, shown)
    both = hints.marked(SEQUENTIAL, ["ACL", "AD"])
    assert (
        "# TODO: add here: nn.Conv2d(16, 16" in both and "# TODO: add here: nn.Dropout" not in both
    )
    assert "# TODO: change the next layer to: nn.Dropout(0.5)" in both


def test_the_marks_a_model_copies_into_its_answer_are_removed() -> None:
    """The 0.5B model copied the TODO comment above the block it added; shown again in the
    next prompt, it went on adding comment and block until max_tokens."""
    for source in (SEQUENTIAL, ATTRIBUTES):
        shown = hints.marked(source, list(ADD + REMOVE))
        assert shown != source and hints.unmarked(shown) == (source, shown.count("# TODO: "))
    assert hints.unmarked(SEQUENTIAL) == (SEQUENTIAL, 0)
    own = SEQUENTIAL.replace("nn.ReLU(),\n        )", "nn.ReLU(),  # TODO: try GELU\n        )")
    assert hints.unmarked(own) == (own, 0)  # the model's own TODOs stay
    copied = hints.marked(SEQUENTIAL, ["ACL"]).replace(
        "        )\n        self.pool",
        "            nn.Conv2d(16, 16, 3, padding=1),\n        )\n        self.pool",
    )
    inline = "nn.BatchNorm2d(8),  # TODO: add here: nn.Conv2d(8, 8),"
    copied = copied.replace("nn.BatchNorm2d(8),", inline, 1)
    candidate = read_answer(f"```python\n{copied}```")
    assert "TODO" not in candidate.code and "nn.Conv2d(16, 16, 3, padding=1)" in candidate.code
    assert "removed the prompt's 2 TODO comments" in candidate.note  # one moved inline


def test_layers_forward_never_applies_are_not_edited() -> None:
    """The local model defined `self.hidden` after the classifier and never used it; the
    next edit still goes before the classifier that forward applies."""
    unused = SEQUENTIAL.replace(
        "        )\n\n    def forward",
        "        )\n        self.spare = nn.Linear(99, 99)\n\n    def forward",
    )
    assert "self.spare" in unused
    assert "nn.Linear(99" not in hints.hint(unused, "ADL")
    assert hints.hint(unused, "ADL") == hints.hint(SEQUENTIAL, "ADL")


def test_unused_layers_are_those_nothing_reads() -> None:
    code = (
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.conv1 = nn.Conv2d(1, 16, 3)\n        self.conv2 = nn.Conv2d(16, 32, 3)\n"
        "        self.conv3 = nn.Conv2d(32, 32, 3)\n        self.head = nn.Sequential(nn.ReLU())\n"
        "        self.bn = nn.BatchNorm2d(16)\n        self.block = nn.Sequential(self.bn)\n"
        "        self.fc = nn.Linear(32, 10)\n\n"
        "    def forward(self, x):\n        x = self.block(self.conv1(x))\n"
        "        if x.shape[0] > 0:\n            x = self.conv2(\n                x)\n"
        "        return self.fc(x.mean((2, 3)))\n"
    )
    assert hints.unused_layers(code) == ["conv3", "head"]
    assert hints.unused_layers(
        code.replace("return self.fc(", "return self.fc(self.head(").replace(
            "x.mean((2, 3)))", "x.mean((2, 3))))"
        )
    ) == ["conv3"]
    assert hints.unused_layers("not python (") == []


def test_marks_left_as_comments_are_read_back_with_their_continued_lines() -> None:
    marked = hints.marked(SEQUENTIAL, ["ADL", "ASC"])
    kept = hints.left_as_comments(marked)
    assert kept and all("TODO" not in code for code in kept)
    answer = (
        "x = 1\n    # TODO: add here: x = x + self.b(\n    #     x)\ny = 2\n# TODO: add here: z\n"
    )
    assert hints.left_as_comments(answer) == ["x = x + self.b( x)", "z"]
    assert hints.left_as_comments("# TODO: tidy this\n") == []
