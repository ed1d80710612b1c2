"""Slips mended where their meaning is plain (lemo_nade.mends, hints.write_kept_marks),
on hand-made code; tests/test_answers.py has the local model's real answers."""

from __future__ import annotations

import textwrap

import pytest

from lemo_nade.hints import CALLED, CREATED, write_kept_marks
from lemo_nade.mends import created, drop_unused, mend, restore


def net(init: str, forward: str = "return self.f(x)") -> str:
    def body(text: str) -> str:
        return textwrap.indent(text.rstrip("\n") + "\n", " " * 8)

    return (
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n" + body(init) + "\n"
        "    def forward(self, x):\n" + body(forward)
    )


@pytest.mark.parametrize(
    ("before", "after", "note"),
    [
        (  # a later conv reads what the one before writes
            "nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(16, 64, 3)",
            "nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3)",
            "mended: made `nn.Conv2d` on line 8 read 32 channels (it said 16,",
        ),
        (  # keywords, the torch.nn spelling, a BatchNorm after a pooling
            "torch.nn.Conv2d(in_channels=3, out_channels=8, kernel_size=3), nn.MaxPool2d(2), "
            "nn.BatchNorm2d(num_features=16)",
            "torch.nn.Conv2d(in_channels=3, out_channels=8, kernel_size=3), nn.MaxPool2d(2), "
            "nn.BatchNorm2d(num_features=8)",
            "mended: made `nn.BatchNorm2d` on line 8 read 8 channels (it said 16,",
        ),
        (  # a dense chain, through dropout, and its BatchNorm1d
            "nn.Flatten(), nn.Linear(512, 64), nn.Dropout(0.5), nn.BatchNorm1d(32), "
            "nn.Linear(128, 10)",
            "nn.Flatten(), nn.Linear(512, 64), nn.Dropout(0.5), nn.BatchNorm1d(64), "
            "nn.Linear(64, 10)",
            "mended: made `nn.BatchNorm1d` on line 8 read 64 features (it said 32,",
        ),
    ],
)
def test_sizes_that_disagree_inside_a_sequential_are_made_to_agree(
    before: str, after: str, note: str
) -> None:
    code, notes = mend(net(f"self.f = nn.Sequential({before})\n"))
    assert code == net(f"self.f = nn.Sequential({after})\n")
    assert notes[0].startswith(note)


@pytest.mark.parametrize(
    "layers",
    [
        "nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64)",  # agrees
        "nn.Conv2d(3, W, 3), nn.Conv2d(16, 64, 3)",  # not a literal: not known
        "nn.Conv2d(3, 32, 3), Block(), nn.Conv2d(16, 64, 3)",  # an unknown layer: unknown
        "nn.Conv2d(3, 32, 3), nn.Sequential(nn.Conv2d(32, 16, 1)), nn.Conv2d(16, 64, 3)",
        "nn.Linear(64, 32), nn.Conv2d(16, 8, 3)",  # a conv after a Linear: not a chain
    ],
)
def test_what_is_not_plainly_a_slip_is_left_alone(layers: str) -> None:
    code = net(f"self.f = nn.Sequential({layers})\n")
    assert mend(code) == (code, [])


PASTED_RES = "self.res = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())"
PASTED_FC = "self.fc = nn.Linear(8, 3)"
SEQ = "self.f = nn.Sequential(\n    nn.Conv2d(3, 8, 3),\n{})\n"


@pytest.mark.parametrize(
    ("inside", "after", "kept", "notes"),
    [
        (  # also on a line of its own: the pasted copy goes
            f"    {PASTED_RES},\n", f"{PASTED_RES}\n", f"{PASTED_RES}\n",
            ["removed `self.res = nn.Sequential(nn.Conv2d(8, 8, 3, pad...` from inside a "
             "call on line 10: it is on line 12"],
        ),
        (  # only pasted there: moved to a line of its own after that statement
            f"    {PASTED_RES}  # new\n", "", f"{PASTED_RES}\n",
            ["moved `self.res = nn.Sequential(nn.Conv2d(8, 8, 3, pad...` out of the call it "
             "was pasted into (line 10)"],
        ),
        (  # two in one call, no comma between them: each taken out
            f"    {PASTED_RES}\n    {PASTED_FC}\n", f"{PASTED_RES}\n",
            f"{PASTED_FC}\n{PASTED_RES}\n",
            ["removed `self.res = nn.Sequential(nn.Conv2d(8, 8, 3, pad...` from inside a "
             "call on line 10: it is on line 13",
             "moved `self.fc = nn.Linear(8, 3)` out of the call it was pasted into (line 11)"],
        ),
    ],
)  # fmt: skip
def test_assignments_pasted_into_a_call_go_or_move_out(
    inside: str, after: str, kept: str, notes: list[str]
) -> None:
    code, got = mend(net(SEQ.format(inside) + after))
    assert code == net(SEQ.format("") + kept)
    assert got == ["mended: " + note for note in notes]


@pytest.mark.parametrize(
    ("inside", "closed"),
    [
        ("    nn.Conv2d(3, 8, 3),\n    # TODO: the last line, written over\n", ")\n"),
        ("    nn.Conv2d(3, 8, 3), nn.ReLU(),\n\n", ")\n"),
        ("    nn.Conv2d(3, 8, 3), nn.Sequential(nn.ReLU(),\n", "    )\n)\n"),  # two left open
    ],
)
def test_a_call_left_open_is_closed_before_the_next_statement(inside: str, closed: str) -> None:
    code, notes = mend(net("self.f = nn.Sequential(\n" + inside + "self.g = nn.Linear(8, 3)\n"))
    assert code == net("self.f = nn.Sequential(\n" + inside + closed + "self.g = nn.Linear(8, 3)\n")
    assert notes[-1] == (
        "mended: closed `self.f = nn.Sequential(`, left open, before `self.g = nn.Linear(8, 3)`"
    )


def test_a_list_left_open_in_a_call_is_closed_bracket_by_bracket() -> None:
    left = net("self.f = nn.ModuleList([\n    nn.Conv2d(3, 8, 3),\nself.g = nn.Linear(8, 3)\n")
    code, notes = mend(left)
    assert code == net(
        "self.f = nn.ModuleList([\n    nn.Conv2d(3, 8, 3),\n]\n)\nself.g = nn.Linear(8, 3)\n"
    )
    assert len(notes) == 2 and all(n.startswith("mended: closed `self.f = nn.Mod") for n in notes)


def test_any_other_syntax_error_goes_back_to_the_model() -> None:
    """Among them a call closed at another indentation than it opened at: which bracket
    was left open is not plain."""
    broken = net("self.f = nn.Sequential(\n    nn.Conv2d(3, 8, 3\n)\n")
    assert mend(broken) == (broken, [])


RES = "self.res = nn.Conv2d(8, 8, 3, padding=1)\n"


def test_a_kept_call_of_a_layer_the_answer_created_is_written_once() -> None:
    mark = "# TODO: add here: x = x + self.res(x)"
    kept = net(RES, f"x = self.f(x)\n{mark}\n{mark}  # again\nreturn x")
    code, written = write_kept_marks(kept)
    assert code == net(RES, f"x = self.f(x)\nx = x + self.res(x)\n{mark}  # again\nreturn x")
    assert written == [("x = x + self.res(x)", CALLED)]


def test_a_kept_creation_of_a_layer_the_answer_calls_is_written() -> None:
    """The other half: forward's call written, the `__init__` mark kept (CIFAR-10)."""
    kept = net("self.f = nn.Identity()\n# TODO: add here: " + RES, "return self.res(self.f(x))")
    code, written = write_kept_marks(kept)
    assert code == net("self.f = nn.Identity()\n" + RES, "return self.res(self.f(x))")
    assert written == [(RES.strip(), CREATED)]
    # a creation nothing calls stays a comment
    idle = net("self.f = nn.Identity()\n# TODO: add here: " + RES, "return self.f(x)")
    assert write_kept_marks(idle) == (idle, [])


def test_a_kept_mark_inside_a_call_is_passed_over_for_one_where_a_statement_goes() -> None:
    """The model copied the `__init__` mark into an `nn.Sequential(...)` and after the
    last layer (tests/answers/qwen_cifar_marks_in_call.md): the first written would not
    parse, so the one after it is written; when it is the only one, none is."""
    inside = "self.f = nn.Sequential(\n    nn.Identity(),\n    # TODO: add here: " + RES + ")\n"
    kept = net(inside + "# TODO: add here: " + RES, "return self.res(self.f(x))")
    code, written = write_kept_marks(kept)
    assert code == net(inside + RES, "return self.res(self.f(x))")
    assert written == [(RES.strip(), CREATED)]
    alone = net(inside, "return self.res(self.f(x))")
    assert write_kept_marks(alone) == (alone, [])


@pytest.mark.parametrize(
    ("init", "forward"),
    [
        ("", "x = self.f(x)\n# TODO: add here: x = x + self.res(x)\nreturn x"),  # not created
        (RES, "x = self.res(x)\n# TODO: add here: x = x + self.res(x)\nreturn x"),  # called
        (  # a mark over two lines
            RES,
            "x = self.f(x)\n# TODO: add here: x = x + self.res(\n#     x)\nreturn x",
        ),
        (  # the mark assigns the layer: an __init__ mark, not a call
            RES,
            "x = self.f(x)\n# TODO: add here: self.res = nn.Identity()\nreturn x",
        ),
        (RES + "# TODO: add here: x = self.res(x)\n", "return self.f(x)"),  # not in forward
        (RES, "x = self.f(x)\n# TODO: change the next line to: x = self.res(x)\nreturn x"),
    ],
)
def test_other_kept_marks_stay_comments(init: str, forward: str) -> None:
    code = net(init, forward)
    assert write_kept_marks(code) == (code, [])


def test_a_parents_layer_the_code_still_calls_is_put_back() -> None:
    parent = net(RES, "return self.res(x)")
    dropped = net("self.f = nn.Identity()\n", "x = self.f(x)\nreturn self.res(x)")
    code, notes = restore(dropped, parent)
    assert code == net("self.f = nn.Identity()\n" + RES, "x = self.f(x)\nreturn self.res(x)")
    assert notes == [
        "mended: put back `self.res = nn.Conv2d(8, 8, 3, padding=1)` from the parent: the "
        "code reads `self.res` and no longer creates it"
    ]


@pytest.mark.parametrize(
    ("init", "forward"),
    [
        (RES, "return self.res(x)"),  # still created
        ("self.res = nn.Identity()\n", "return self.res(x)"),  # created anew: kept as is
        ("", "return self.block(x)"),  # the parent never had it: its error goes back
        ("", "return self.helper(x)"),  # a method of the class (below)
    ],
)
def test_nothing_is_put_back_when_nothing_of_the_parents_is_missing(
    init: str, forward: str
) -> None:
    parent = net(RES + "self.helper = nn.Identity()\n", "return self.res(x)")
    code = net(init or "pass\n", forward) + "\n    def helper(self, x):\n        return x\n"
    assert restore(code, parent) == (code, [])


POOL = "self.pool = nn.AdaptiveAvgPool2d(1)\n"
PARENT_FORWARD = (
    "x = self.f(x)\nx = x + self.res(x)\nx = self.pool(x).flatten(1)\nreturn self.fc(x)"
)


@pytest.mark.parametrize(
    ("forward", "mended"),
    [
        (  # the new line written over the pooling line
            "x = self.f(x)\nx = x + self.res(x)\nx = x + self.res2(x)\nreturn self.fc(x)",
            "x = self.f(x)\nx = x + self.res(x)\nx = x + self.res2(x)\n"
            "x = self.pool(x).flatten(1)\nreturn self.fc(x)",
        ),
        (  # over the skip connection's line: back before what followed it (two blocks of
            # one width, in either order; a pooling line put back early would break)
            "x = self.f(x)\nx = x + self.res2(x)\nx = self.pool(x).flatten(1)\nreturn self.fc(x)",
            "x = self.f(x)\nx = x + self.res2(x)\nx = x + self.res(x)\n"
            "x = self.pool(x).flatten(1)\nreturn self.fc(x)",
        ),
    ],
)
def test_a_parents_forward_line_the_code_dropped_is_put_back(forward: str, mended: str) -> None:
    init = "self.f = nn.Conv2d(1, 8, 3)\n" + RES + "self.res2 = nn.Identity()\n" + POOL
    parent = net(init.replace("self.res2 = nn.Identity()\n", ""), PARENT_FORWARD)
    code, notes = restore(net(init, forward), parent)
    assert code == net(init, mended)
    assert len(notes) == 1 and notes[0].startswith("mended: put back forward's `x = ")


def test_a_dropped_forward_line_stays_out_when_its_layer_went_too() -> None:
    parent = net("self.f = nn.Conv2d(1, 8, 3)\n" + RES + POOL, PARENT_FORWARD)
    dropped = net("self.f = nn.Conv2d(1, 8, 3)\n" + POOL,  # self.res removed: meant
                  "x = self.f(x)\nx = self.pool(x).flatten(1)\nreturn self.fc(x)")  # fmt: skip
    assert restore(dropped, parent) == (dropped, [])
    # nothing the parent had after it is left to place it before
    tail = net("self.f = nn.Conv2d(1, 8, 3)\n" + RES + POOL, "return self.f(x)")
    assert restore(tail, parent) == (tail, [])


def test_new_layers_never_called_are_dropped_with_a_note_each() -> None:
    code = net(
        "self.f = nn.Identity()\nself.conv2 = nn.Conv2d(\n    8, 8, 3\n)\n" + RES,
        "return self.res(self.f(x))",
    )
    dropped, notes = drop_unused(code, ["conv2"])
    assert dropped == net("self.f = nn.Identity()\n" + RES, "return self.res(self.f(x))")
    assert notes == ["mended: removed `self.conv2 = nn.Conv2d(`: forward never calls it"]
    assert drop_unused(code, []) == (code, [])
    assert drop_unused("class Net(:", ["conv2"]) == ("class Net(:", [])
    assert created(code) == {"f", "conv2", "res"}
