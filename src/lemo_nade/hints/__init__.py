"""Concrete edits for an instruction, pointed at the parent's own lines.

A 0.5B model given "Add convolutional layer: add one more conv block" answered with its
parent's code, unchanged, iteration after iteration; the same instruction as an edit of
its own lines (``right after `nn.ReLU()` (line 18), the last layer of `self.features`,
add `nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),```) is
something it can copy. :func:`hint` writes that edit for each instruction of Table 2
(:mod:`.edits`) from the parent's source, parsed with :mod:`ast` and never run
(:mod:`.source`); :func:`marked` puts the edits into the parent's code shown in the
prompt, as ``# TODO:`` comments where they go. Where the code is not in a shape it
understands, there is no edit and the prompt keeps the general how-to
(``prompts.HOW_TO``).

Pure: no torch.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator

from lemo_nade.hints.edits import EDITS
from lemo_nade.hints.source import (
    Edit,
    Mark,
    attribute_assignment,
    net_class,
    read,
    self_attributes,
    uncreated,
    unused_layers,
)
from lemo_nade.tidy import parses

__all__ = [
    "CALLED", "CREATED", "EDITS", "Edit", "Mark", "edit", "hint", "left_as_comments",
    "marked", "unmarked", "unused_layers", "write_kept_marks",
]  # fmt: skip

TODO = "# TODO: "
CONTINUED = "#     "  # the lines of a mark after its first


def edit(code: str, instruction: str) -> Edit | None:
    """The edit for ``instruction`` in ``code``; None when none can be written."""
    model = read(code)
    write = EDITS.get(instruction)
    if model is None or write is None:
        return None
    try:
        return write(model)
    except (ValueError, IndexError, TypeError):
        return None


def hint(code: str, instruction: str) -> str:
    """The edit for ``instruction`` in ``code``, in words; "" when none can be written."""
    found = edit(code, instruction)
    return found.text if found else ""


def marked(code: str, instructions: Iterable[str]) -> str:
    """``code`` with a ``# TODO:`` comment where each instruction's edit goes, indented
    as the line it is next to."""
    lines = code.splitlines()
    inserts: list[tuple[int, str]] = []  # (index to insert at, text)
    for instruction in instructions:
        found = edit(code, instruction)
        for mark in found.marks if found else ():
            if not 1 <= mark.line <= len(lines):
                continue
            anchor = lines[mark.line - 1]
            indent = anchor[: len(anchor) - len(anchor.lstrip())]
            comment = "\n".join(f"{indent}{CONTINUED if n else TODO}{text}"
                                for n, text in enumerate(mark.text.splitlines()))  # fmt: skip
            inserts.append((mark.line - 1 if mark.before else mark.line, comment))
    for index, comment in sorted(inserts, key=lambda item: item[0], reverse=True):
        lines.insert(index, comment)
    return "\n".join(lines) + ("\n" if code.endswith("\n") else "")


def unmarked(code: str) -> tuple[str, int]:
    """``code`` without the ``# TODO:`` comments :func:`marked` writes (a model copies
    them into its answer; left in, the next prompt showed them twice and the 0.5B model
    went on adding the block and the comment until ``max_tokens``), and how many."""
    kept: list[str] = []
    removed = 0
    for line, kind, _ in _scan(code):
        if kind is not None:
            removed += kind == "mark"
            continue
        cut = _INLINE.search(line)  # moved to the end of a code line
        if cut is not None:
            line, removed = line[: cut.start()].rstrip(), removed + 1
        kept.append(line)
    if not removed:
        return code, 0
    return "\n".join(kept) + ("\n" if code.endswith("\n") else ""), removed


def left_as_comments(answer: str) -> list[str]:
    """The code of every ``# TODO: add here:`` mark an answer kept as a comment (joined
    over its continued lines), in order: what the model was shown and did not write."""
    found: list[str] = []
    adding = False
    for _, kind, body in _scan(answer):
        if kind == "mark":
            adding = body.startswith(_ADD)
            if adding:
                found.append(body.removeprefix(_ADD).strip())
        elif kind == "continued" and adding:
            found[-1] += " " + body.strip()
    return found


CALLED = "the answer creates the layer it calls and forward never called it"
CREATED = "forward calls the layer it creates and nothing created it"


def write_kept_marks(code: str) -> tuple[str, list[tuple[str, str]]]:
    """``code`` with each one-line ``# TODO: add here:`` mark its answer means written as
    code, and each statement written with why (:data:`CALLED` or :data:`CREATED`): in
    ``forward``, a call of layers ``code`` creates and never calls; in ``__init__``, the
    creation of a layer ``code`` calls and never creates. Asked for a skip connection,
    the 0.5B model wrote one half of the edit as code and kept the other half's mark as
    a comment: ``self.res = ...`` written and ``x = x + self.res(x)`` kept
    (tests/answers/qwen_iter_unused.md, through every repair), or the other way round.
    A mark for a layer the answer neither created nor called stays a comment
    (:func:`unmarked` removes it)."""
    tree = parses(code)
    net = net_class(tree) if tree is not None else None
    if net is None:
        return code, []
    init, forward = _span(net, "__init__"), _span(net, "forward")
    dead, missing = set(unused_layers(code)), set(uncreated(net))
    lines, written = code.splitlines(), []
    scanned = list(_scan(code))
    for index, (line, kind, body) in enumerate(scanned):
        one_line = index + 1 == len(scanned) or scanned[index + 1][1] != "continued"
        if kind != "mark" or not body.startswith(_ADD) or not one_line:
            continue
        statement = body.removeprefix(_ADD).strip()
        called, created = _calls(statement), _creates(statement)
        if forward[0] <= index + 1 <= forward[1] and called and called <= dead:
            why = CALLED
        elif init[0] <= index + 1 <= init[1] and created in missing:
            why = CREATED
        else:
            continue
        kept = lines[index]
        lines[index] = line[: len(line) - len(line.lstrip())] + statement
        if parses("\n".join(lines)) is None:  # a mark inside a call: no statement goes there
            lines[index] = kept
            continue
        dead, missing = dead - called, missing - {created}  # a mark copied twice: written once
        written.append((statement, why))
    out = "\n".join(lines) + ("\n" if code.endswith("\n") else "")
    return (out, written) if written else (code, [])


def _span(net: ast.ClassDef, name: str) -> tuple[int, int]:
    """The lines of ``class Net``'s method ``name``, up to the next definition (a mark
    after a method's last statement, where ``__init__``'s new attributes go, is in it);
    (0, -1) when there is none."""
    for n, item in enumerate(net.body):
        if isinstance(item, ast.FunctionDef) and item.name == name:
            last = item.end_lineno or item.lineno
            return item.lineno, net.body[n + 1].lineno - 1 if n + 1 < len(net.body) else last
    return 0, -1


def _creates(statement: str) -> str | None:
    """``x`` when a statement is ``self.x = ...``; None otherwise."""
    node = attribute_assignment(statement)
    target = node.targets[0] if node is not None else None
    if isinstance(target, ast.Attribute) and self_attributes(target) == [target]:
        return target.attr
    return None


def _calls(statement: str) -> set[str]:
    """The ``self.<name>`` a statement reads; empty when it does not parse or assigns one."""
    tree = parses(statement)
    if tree is None or len(tree.body) != 1:
        return set()
    attrs = self_attributes(tree)
    if any(not isinstance(a.ctx, ast.Load) for a in attrs):
        return set()
    return {a.attr for a in attrs}


def _scan(code: str) -> Iterator[tuple[str, str | None, str]]:
    """Each line of ``code`` with what it is: the first line of a :func:`marked` comment
    (``"mark"``, its text after ``# TODO: ``), one of its continued lines
    (``"continued"``, the text after the ``#``), or anything else (None)."""
    inside = False
    for line in code.splitlines():
        text = line.lstrip()
        if text.startswith(TODO) and text.removeprefix(TODO).startswith(_VERBS):
            inside = True
            yield line, "mark", text.removeprefix(TODO)
        elif inside and text.startswith(CONTINUED):
            yield line, "continued", text.removeprefix(CONTINUED)
        else:
            inside = False
            yield line, None, ""


_ADD = "add here:"
_VERBS = ("add here:", "change the next", "delete the next", "drop the `+`")
_INLINE = re.compile(r"\s+# TODO: (?:add here:|change the next|delete the next|drop the `\+`).*$")
