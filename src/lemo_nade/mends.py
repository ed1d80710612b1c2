"""Mechanical slips in an answer mended where its meaning is plain, before it is built.

Slips of the local 0.5B model, each of which cost attempts on the CIFAR-10 subset or
``shifted-digits`` and was repeated by its repairs:

- **Channel sizes that disagree inside one ``nn.Sequential``** (:func:`mend`). It widened
  the first conv to ``nn.Conv2d(3, 32, ...)`` and left the next one reading 16 channels;
  its repair moved the mismatch to the BatchNorm. A Sequential is a chain, so each
  ``Conv2d``'s ``in_channels`` and each ``BatchNorm2d``'s size must be the
  ``out_channels`` of the conv before it (and a ``Linear``'s ``in_features``, or a
  ``BatchNorm1d``'s size, the ``out_features`` of the Linear before it). A chain that
  disagrees fails on every input; the later layer is made to read what the earlier one
  writes, which keeps the change the model made. Only literal integers are changed, and
  only between layers whose sizes are all literal (any other layer breaks the chain).
- **Assignments pasted into a call's arguments** (:func:`mend`: ``self.res =
  nn.Sequential(...)`` inside ``self.features = nn.Sequential(...)``, a syntax error):
  removed when the same statement is also written on its own line, else moved there.
- **A call left open** (:func:`mend`: a TODO comment written over the last line of
  ``self.features = nn.Sequential(...)``, its ``)`` included; in all three attempts of
  an iteration on ``shifted-digits``): closed before the next line of code back at the
  opening line's indentation.
- **A parent's line dropped while still needed** (:func:`restore`): the model wrote its
  one new line over a line of its parent that the rest of its code still relies on.
  The parent's own line is put back; nothing new is written.
- **A new layer never called** (:func:`drop_unused`, when the rest of the answer still
  changes the model): it is removed, as it changes nothing but the weight count.

Each mend is a note starting with :data:`MENDED`; the mended code is built, measured and
judged like any other. Pure: no torch.
"""

from __future__ import annotations

import ast
import textwrap

from lemo_nade.hints.source import (
    argument,
    assigned,
    attribute_assignment,
    int_literal,
    layer_kind,
    net_class,
    self_attributes,
    uncreated,
    unused_layers,
)
from lemo_nade.tidy import Cut, Source, parses

# layers that keep the number of channels (or features) of their input
PASS_THROUGH = frozenset({
    "ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "ELU", "Mish", "Sigmoid", "Tanh",
    "Hardswish", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "Dropout", "Dropout2d", "Identity",
})  # fmt: skip
# layer -> (argument read, its keyword, argument written or None, its keyword, space)
SIZES = {
    "Conv2d": (0, "in_channels", 1, "out_channels", "maps"),
    "BatchNorm2d": (0, "num_features", None, "", "maps"),
    "Linear": (0, "in_features", 1, "out_features", "vector"),
    "BatchNorm1d": (0, "num_features", None, "", "vector"),
}
_NOUN = {"maps": "channels", "vector": "features"}
_MAX_PASTED = 8  # slips of one kind (pasted assignments, open calls) mended in one answer
_CLOSING = {"(": ")", "[": "]", "{": "}"}  # what closes the bracket a syntax error names
MENDED = "mended: "  # how each note on a mend starts (bench/llm.py counts them)


def mend(code: str) -> tuple[str, list[str]]:
    """``code`` with its slips mended, and a note for each; unchanged with no notes when
    there were none (or when mending would not leave code that parses)."""
    code, notes = _closed_calls(code)
    code, pasted = _pasted_assignment(code)
    notes += pasted
    tree = parses(code)
    if tree is None:
        return code, notes
    src = Source(code)
    cuts: list[Cut] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and layer_kind(node) == "Sequential":
            cuts += _chain(node.args, src, notes)
    if not cuts:
        return code, notes
    mended = src.apply(cuts)
    return (mended, notes) if parses(mended) is not None else (code, notes[: -len(cuts)])


def _chain(layers: list[ast.expr], src: Source, notes: list[str]) -> list[Cut]:
    """The cuts that make each layer of one Sequential read what the one before writes."""
    cuts: list[Cut] = []
    width: dict[str, int | None] = {"maps": None, "vector": None}
    for layer in layers:
        kind = layer_kind(layer) if isinstance(layer, ast.Call) else ""
        if kind in PASS_THROUGH:
            continue
        if kind not in SIZES or not isinstance(layer, ast.Call):
            width = {"maps": None, "vector": None}  # unknown: the chain is broken here
            continue
        read_at, read_kw, write_at, write_kw, space = SIZES[kind]
        read = argument(layer, read_at, read_kw)
        expected, got = width[space], int_literal(read)
        if read is not None and expected is not None and got is not None and got != expected:
            cuts.append(src.replace(read, str(expected)))
            notes.append(
                f"{MENDED}made `nn.{kind}` on line {layer.lineno} read {expected} {_NOUN[space]} "
                f"(it said {got}, and the layer before it in the nn.Sequential gives {expected})"
            )
        if write_at is not None:
            width = {"maps": None, "vector": None}
            width[space] = int_literal(argument(layer, write_at, write_kw))
    return cuts


def restore(code: str, parent: str) -> tuple[str, list[str]]:
    """``code`` with the parent's lines it dropped and still relies on put back, and a
    note for each. Writing the one line it was asked for, the 0.5B model often wrote it
    over a line of its parent: over ``self.res = ...`` while forward still called
    ``self.res`` (4 of the first 8 iterations of a CIFAR-10 run), or over forward's
    ``x = self.pool(x).flatten(1)`` or ``x = x + self.res(x)`` while ``__init__`` still
    created the layer (11 of the 15 failed attempts of another). Unchanged, with no
    notes, when nothing is missing or the code does not parse."""
    code, created = _put_back_created(code, parent)
    code, called = _put_back_calls(code, parent)
    return code, created + called


def _put_back_created(code: str, parent: str) -> tuple[str, list[str]]:
    """Each ``self.x = ...`` line of the parent's ``__init__``, at the end of
    ``__init__``, when ``code`` still reads ``self.x`` and no longer creates it."""
    tree, old = parses(code), parses(parent) if parent else None
    init = method(tree, "__init__") if tree is not None else None
    parent_init = method(old, "__init__") if old is not None else None
    if tree is None or init is None or parent_init is None:
        return code, []
    net = net_class(tree)
    missing = uncreated(net) if net is not None else []
    lines, notes = [], []
    for stmt in parent_init.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) else None
        if isinstance(target, ast.Attribute) and target.attr in missing:
            text = ast.get_source_segment(parent, stmt) or ast.unparse(stmt)
            lines.append(textwrap.indent(text, " " * init.body[0].col_offset))
            notes.append(
                f"{MENDED}put back `{_short(text.splitlines()[0])}` "
                f"from the parent: the code reads `self.{target.attr}` and no longer creates it"
            )
    if not lines:
        return code, []
    source = code.splitlines()
    at = init.end_lineno or init.lineno
    mended = "\n".join(source[:at] + lines + source[at:]) + ("\n" if code.endswith("\n") else "")
    return (mended, notes) if parses(mended) is not None else (code, [])


def _put_back_calls(code: str, parent: str) -> tuple[str, list[str]]:
    """Each statement of the parent's ``forward`` that called a layer ``code`` still
    creates and no longer calls, before the first statement that followed it in the
    parent and is still there (the model wrote its new line in its place)."""
    tree, old = parses(code), parses(parent) if parent else None
    forward = method(tree, "forward") if tree is not None else None
    parent_forward = method(old, "forward") if old is not None else None
    if forward is None or parent_forward is None:
        return code, []
    dead = set(unused_layers(code)) - set(unused_layers(parent))
    kept = {ast.dump(stmt): stmt for stmt in forward.body}
    inserts: list[tuple[int, str]] = []  # (index of the line to insert before, text)
    notes = []
    for n, stmt in enumerate(parent_forward.body):
        calls = {a.attr for a in self_attributes(stmt) if isinstance(a.ctx, ast.Load)} & dead
        later = (kept[ast.dump(s)] for s in parent_forward.body[n + 1 :] if ast.dump(s) in kept)
        before = next(later, None) if calls and ast.dump(stmt) not in kept else None
        if before is None:
            continue
        text = ast.get_source_segment(parent, stmt) or ast.unparse(stmt)
        inserts.append((before.lineno - 1, textwrap.indent(text, " " * before.col_offset)))
        dead -= calls
        notes.append(
            f"{MENDED}put back forward's `{_short(text.splitlines()[0])}` from the parent: "
            f"the code creates `self.{sorted(calls)[0]}` and no longer called it"
        )
    lines = code.splitlines()
    # from the end, so indices hold; at one place, the parent's order
    for _, (index, text) in sorted(enumerate(inserts), key=lambda t: (t[1][0], t[0]))[::-1]:
        lines[index:index] = [text]
    mended = "\n".join(lines) + ("\n" if code.endswith("\n") else "")
    return (mended, notes) if inserts and parses(mended) is not None else (code, [])


def drop_unused(code: str, names: list[str]) -> tuple[str, list[str]]:
    """``code`` without ``__init__``'s ``self.<name> = ...`` statements for ``names`` (new
    layers nothing reads: they add weights and change nothing), and a note for each.
    Asked for a conv layer and a skip connection, the 0.5B model wrote the skip connection
    and a ``self.conv2`` that forward never calls, through both repairs (CIFAR-10)."""
    tree = parses(code)
    init = method(tree, "__init__") if tree is not None else None
    if init is None:
        return code, []
    src, cuts, notes = Source(code), [], []
    for stmt in init.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) else None
        if isinstance(target, ast.Attribute) and target.attr in names:
            cuts.append(src.cut(stmt))
            first = src.segment(stmt).splitlines()[0]
            notes.append(f"{MENDED}removed `{_short(first)}`: forward never calls it")
    mended = src.apply(cuts) if cuts else code
    return (mended, notes) if cuts and parses(mended) is not None else (code, [])


def created(code: str) -> set[str]:
    """The ``self.<name>`` attributes ``class Net`` assigns (empty when it does not parse)."""
    tree = parses(code)
    return assigned(net_class(tree) if tree is not None else None)


def method(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    """``class Net``'s method ``name``, or None."""
    net = net_class(tree)
    body = net.body if net is not None else []
    return next((f for f in body if isinstance(f, ast.FunctionDef) and f.name == name), None)


def _pasted_assignment(code: str) -> tuple[str, list[str]]:
    """Without the ``self.x = ...`` lines pasted inside a call's arguments (a syntax
    error each): one is removed when the same statement stands on a line of its own,
    else moved to a line of its own right after the statement it was pasted into."""
    lines, kept = code.splitlines(), list(range(len(code.splitlines())))
    pulled: list[tuple[int, ast.Assign]] = []  # (index in ``lines``, the statement)
    while len(pulled) < _MAX_PASTED and (
        error := _error_line(_text(lines, kept), "cannot contain assignment")
    ):
        at = error[0]
        node = attribute_assignment(lines[kept[at]]) if at < len(kept) else None
        if node is None:
            return code, []
        pulled.append((kept.pop(at), node))
    tree = parses(_text(lines, kept)) if pulled else None
    if tree is None:
        return code, []
    inserts, notes = [], []
    for n, (index, node) in enumerate(pulled):
        shown = _short(ast.unparse(node))
        same = [k for k in kept if _same(attribute_assignment(lines[k]), node)]
        if same:
            notes.append(f"{MENDED}removed `{shown}` from inside a call on line {index + 1}: "
                         f"it is on line {same[0] + 1}")  # fmt: skip
            continue
        at = sum(k < index for k in kept)  # where it was, in the code without it
        hosts = [h for h in ast.walk(tree) if isinstance(h, ast.Assign | ast.Expr | ast.Return)
                 and h.lineno <= at < (h.end_lineno or h.lineno)]  # fmt: skip
        if not hosts:
            return code, []
        host = max(hosts, key=lambda h: h.lineno)
        inserts.append(
            (host.end_lineno or host.lineno, n, " " * host.col_offset + ast.unparse(node))
        )
        notes.append(
            f"{MENDED}moved `{shown}` out of the call it was pasted into (line {index + 1})"
        )
    out = [lines[k] for k in kept]
    for at, _, text in sorted(inserts, reverse=True):
        out.insert(at, text)
    mended = "\n".join(out) + ("\n" if code.endswith("\n") else "")
    return (mended, notes) if parses(mended) is not None else (code, [])


def _closed_calls(code: str) -> tuple[str, list[str]]:
    """Calls (or lists, dicts) left open, a syntax error each, closed: the ``)`` goes
    right before the next line of code back at the opening line's indentation. The 0.5B
    model wrote a TODO comment over the last line of ``self.features =
    nn.Sequential(...)``, closing parenthesis included, and its repairs kept it."""
    lines, notes, ours = code.splitlines(), list[str](), list[int]()  # ours: lines added
    while len(notes) < _MAX_PASTED and (error := _error_line("\n".join(lines), "was never closed")):
        at, bracket = error[0], _CLOSING.get(error[1][1:2], ")")
        indent = _indent(lines[at])
        after = (k for k in range(at + 1, len(lines)) if k not in ours)
        close = next((k for k in after if _at_or_left(lines[k], indent)), None)
        if close is None or not _code(lines[close]):
            return code, []
        notes.append(f"{MENDED}closed `{_short(lines[at].strip())}`, left open, before "
                     f"`{_short(lines[close].strip())}`")  # fmt: skip
        lines.insert(close, " " * indent + bracket)
        ours = [k + (k >= close) for k in ours] + [close]
    mended = "\n".join(lines) + ("\n" if code.endswith("\n") else "")
    return (mended, notes) if notes and parses(mended) is not None else (code, [])


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _at_or_left(line: str, indent: int) -> bool:
    """Whether ``line`` holds something (not a comment) at ``indent`` or less."""
    text = line.strip()
    return bool(text) and not text.startswith("#") and _indent(line) <= indent


def _code(line: str) -> bool:
    """Whether ``line`` starts a statement; not a closing bracket (the call is closed
    there, only not at the indentation it opened at: what was left open is not plain)."""
    return line.strip()[0] not in ")]}"


def _text(lines: list[str], kept: list[int]) -> str:
    return "\n".join(lines[k] for k in kept)


def _error_line(code: str, message: str) -> tuple[int, str] | None:
    """The index of the line of ``code``'s syntax error, and the error, when the error
    says ``message`` ("cannot contain assignment": never line 0, which is never inside
    a call; "was never closed")."""
    try:
        ast.parse(code)
    except SyntaxError as exc:
        if message in (exc.msg or "") and exc.lineno:
            return exc.lineno - 1, exc.msg
    except (ValueError, RecursionError, MemoryError):
        pass
    return None


def _short(line: str) -> str:
    return line if len(line) <= 50 else line[:47] + "..."


def _same(a: ast.Assign | None, b: ast.Assign) -> bool:
    return a is not None and ast.dump(a) == ast.dump(b)
