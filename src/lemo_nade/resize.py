"""A layer's size mended from the shape check's error, when the error says what it reads.

The static mends (:mod:`lemo_nade.mends`) can only compare sizes written next to each
other inside one ``nn.Sequential``. Across statements the size a layer receives is known
only by running the model, and the shape check does that: its error names the layer's
line in forward, the size the layer declares and the size it got. The local 0.5B model
left such mismatches behind every widening it was asked for (``shifted-digits``, 3 of a
run's 4 failed iterations): the features widened to 64 channels while the skip connection
after them still read 32, or a new ``Linear(32, 64)`` in front of a classifier that read
32. Its repairs repeated them.

:func:`resize` makes that one layer read what it receives:

- ``mat1 and mat2 shapes cannot be multiplied (2xGOT and DECLAREDxN)`` (a batch of 2: the
  Linear got a vector) at a line calling ``self.x``: the first ``Linear`` of ``self.x``
  (the layer, or the first sized layer of its ``nn.Sequential``) reads GOT features;
- ``weight of size [..], expected input[..] to have DECLARED channels, but got GOT``:
  the same for the first ``Conv2d``;
- ``running_mean should contain DECLARED elements not GOT``: for a ``BatchNorm``.

And a ``Linear`` given a feature map (``mat1 and mat2 ...`` with more rows than the batch
of 2) by forward's ``x = self.x(x)`` above the line that flattens is moved below that
line (:func:`_below_flatten`).

A skip connection (``x + self.x(x)``) must give back what it reads, so there every size
in the block becomes GOT, and only when each of them is DECLARED or GOT already.
Only integer literals change, only when exactly one layer on the line fits the error.
The loop keeps a resized candidate only when it then passes the shape check
(:meth:`lemo_nade.search.Search.propose`). Pure: no torch. The error is untrusted text
(the candidate's process wrote it); it only selects numbers in the candidate's own code,
which is then checked and sandboxed again.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import replace

from lemo_nade.hints.source import argument, int_literal, is_self_attr, layer_kind
from lemo_nade.mends import MENDED, PASS_THROUGH, SIZES, method
from lemo_nade.prompts import REPAIRABLE
from lemo_nade.records import Evaluation, Proposal, Status
from lemo_nade.repairs import BATCHNORM, CHANNELS, MAP_MATMUL, MATMUL, failing_line
from lemo_nade.tidy import Cut, Source, parses

MAX_ROUNDS = 6  # resizes, at most, one answer gets (each one shape check, ~0.1 s)


def resized(
    proposal: Proposal, evaluation: Evaluation, evaluate: Callable[[Proposal], Evaluation]
) -> tuple[Proposal, Evaluation]:
    """The proposal resized (:func:`resize`) and evaluated again while its shape check
    fails on a size, up to :data:`MAX_ROUNDS` times; kept only when it then trains, or
    fails in training (else the answer as written goes back with its own error: a
    resize that ends as a duplicate or another build error is not the model's answer).
    A kept evaluation's wall time is that of every try."""
    tried, spent = (proposal, evaluation), evaluation.wall_time_s
    for _ in range(MAX_ROUNDS):
        if evaluation.status is not Status.FAILED_SHAPE:
            break
        code, notes = resize(proposal.code, evaluation.error)
        if not notes:
            break
        notes = [proposal.notes, *notes] if proposal.notes else notes
        proposal = replace(proposal, code=code, notes="; ".join(notes))
        evaluation = evaluate(proposal)
        spent += evaluation.wall_time_s
    if evaluation.status in REPAIRABLE or proposal is tried[0]:
        return tried
    return proposal, replace(evaluation, wall_time_s=spent)


def resize(code: str, error: str) -> tuple[str, list[str]]:
    """``code`` with the layer the shape-check ``error`` points at reading the size it
    got, and a note; unchanged with no notes when the error is not one of those above or
    the layer is not plainly one of ``code``'s."""
    found = _mismatch(error)
    tree = parses(code)
    line = failing_line(error, code)
    stmt = _statement(tree, line[0]) if tree is not None and line is not None else None
    if stmt is None or tree is None:
        return code, []
    if MAP_MATMUL.search(error):  # a Linear given a feature map
        return _below_flatten(code, tree, stmt)
    if found is None:
        return code, []
    kinds, declared, got = found
    layers = _init_layers(tree)
    fits: dict[str, bool] = {}  # the layers on the line that fit -> called as a skip
    for name, skip in _self_calls(stmt):
        sized = _sized(layers.get(name))
        if sized and layer_kind(sized[0]) in kinds and _reads(sized[0]) == declared:
            fits[name] = fits.get(name, False) or skip
    if len(fits) != 1:
        return code, []
    ((name, skip),) = fits.items()
    sized = _sized(layers[name])
    src = Source(code)
    if not skip:
        cuts = _set(src, _read_arg(sized[0]), got)
        note = f"made `self.{name}` read {got} (it said {declared}; forward gives it {got})"
    elif all(v in (declared, got, None) for s in sized for v in (_reads(s), _writes(s))):
        cuts = _widen(src, sized, got)
        note = (
            f"made the skip connection `self.{name}` {got} wide throughout (it was "
            f"{declared}; forward gives it {got} and adds its output back)"
        )
    else:
        return code, []
    mended = src.apply(cuts)
    return (mended, [MENDED + note]) if parses(mended) is not None else (code, [])


def _below_flatten(code: str, tree: ast.Module, stmt: ast.stmt) -> tuple[str, list[str]]:
    """``code`` with forward's one-line ``x = self.x(x)``, where ``self.x`` starts with a
    ``Linear`` and got a feature map, moved to right after the next line that flattens:
    the 0.5B model put the dense layer it was asked for above
    ``x = self.pool(x).flatten(1)``."""
    forward = method(tree, "forward")
    body = forward.body if forward is not None else []
    calls = _self_calls(stmt)
    sized = _sized(_init_layers(tree).get(calls[0][0])) if len(calls) == 1 else []
    if stmt not in body or not sized or layer_kind(sized[0]) != "Linear" or calls[0][1]:
        return code, []
    flat = next((s for s in body[body.index(stmt) + 1 :] if "flatten(" in ast.unparse(s)), None)
    if flat is None or stmt.end_lineno != stmt.lineno or flat.end_lineno != flat.lineno:
        return code, []
    lines = code.splitlines()
    moved, after = lines[stmt.lineno - 1], flat.lineno - 1
    indent = " " * flat.col_offset
    out = lines[: stmt.lineno - 1] + lines[stmt.lineno : after + 1]
    out += [indent + moved.strip(), *lines[after + 1 :]]
    mended = "\n".join(out).rstrip() + "\n"
    note = (
        f"moved `{ast.unparse(stmt)}` below `{ast.unparse(flat)}`: a Linear takes the flat "
        "[batch, features] tensor, and there it got a feature map"
    )
    return (mended, [MENDED + note]) if parses(mended) is not None else (code, [])


def _mismatch(error: str) -> tuple[frozenset[str], int, int] | None:
    """(layer kinds the error is about, the size declared, the size got)."""
    if (m := MATMUL.search(error)) and m.group(1) == "2":  # a batch of 2: a vector
        return frozenset({"Linear"}), int(m.group(3)), int(m.group(2))
    if m := CHANNELS.search(error):
        return frozenset({"Conv2d"}), int(m.group(1)), int(m.group(2))
    if m := BATCHNORM.search(error):
        return frozenset({"BatchNorm2d", "BatchNorm1d"}), int(m.group(1)), int(m.group(2))
    return None


def _statement(tree: ast.Module, lineno: int) -> ast.stmt | None:
    """forward's innermost statement spanning line ``lineno``."""
    forward = method(tree, "forward")
    spans = [
        s
        for s in (ast.walk(forward) if forward is not None else ())
        if isinstance(s, ast.stmt) and s.lineno <= lineno <= (s.end_lineno or s.lineno)
    ]
    return max(spans, key=lambda s: s.lineno, default=None)


def _self_calls(stmt: ast.stmt) -> list[tuple[str, bool]]:
    """The ``x`` of each ``self.x(...)`` call in ``stmt``, and whether the call is one
    side of a ``+`` whose other side is its own input (a skip connection)."""
    added: set[int] = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            for side, other in ((node.left, node.right), (node.right, node.left)):
                if isinstance(side, ast.Call) and side.args and _same(side.args[0], other):
                    added.add(id(side))
    calls = [n for n in ast.walk(stmt) if isinstance(n, ast.Call)]
    return [
        (c.func.attr, id(c) in added)
        for c in calls
        if isinstance(c.func, ast.Attribute) and is_self_attr(c.func)
    ]


def _init_layers(tree: ast.Module) -> dict[str, ast.expr]:
    """``self.x = <value>`` of ``__init__``'s top level; the last, for a name assigned
    more than once (the one forward runs)."""
    init = method(tree, "__init__")
    found: dict[str, ast.expr] = {}
    for stmt in init.body if init is not None else []:
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
            continue
        target = stmt.targets[0]
        if isinstance(target, ast.Attribute) and is_self_attr(target):
            found[target.attr] = stmt.value
    return found


def _sized(value: ast.expr | None) -> list[ast.Call]:
    """The sized layers of one layer or ``nn.Sequential``, in order; empty when any part
    is not a layer this module knows (the sizes are then not plain)."""
    if not isinstance(value, ast.Call):
        return []
    parts = value.args if layer_kind(value) == "Sequential" else [value]
    sized: list[ast.Call] = []
    for part in parts:
        kind = layer_kind(part) if isinstance(part, ast.Call) else ""
        if kind in PASS_THROUGH:
            continue
        if kind not in SIZES or not isinstance(part, ast.Call) or _reads(part) is None:
            return []
        sized.append(part)
    return sized


def _read_arg(layer: ast.Call) -> ast.expr | None:
    read_at, read_kw, *_ = SIZES[layer_kind(layer)]
    return argument(layer, read_at, read_kw)


def _reads(layer: ast.Call) -> int | None:
    return int_literal(_read_arg(layer))


def _writes(layer: ast.Call) -> int | None:
    _, _, write_at, write_kw, _ = SIZES[layer_kind(layer)]
    return int_literal(argument(layer, write_at, write_kw)) if write_at is not None else None


def _widen(src: Source, sized: list[ast.Call], width: int) -> list[Cut]:
    cuts = []
    for layer in sized:
        _, _, write_at, write_kw, _ = SIZES[layer_kind(layer)]
        cuts += _set(src, _read_arg(layer), width)
        if write_at is not None:
            cuts += _set(src, argument(layer, write_at, write_kw), width)
    return cuts


def _set(src: Source, literal: ast.expr | None, value: int) -> list[Cut]:
    return [src.replace(literal, str(value))] if literal is not None else []


def _same(a: ast.expr, b: ast.expr) -> bool:
    return ast.dump(a) == ast.dump(b)
