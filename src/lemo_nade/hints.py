"""Concrete edits for an instruction, pointed at the parent's own lines.

A 0.5B model given "Add convolutional layer: add one more conv block" answered with its
parent's code, unchanged, iteration after iteration; the same instruction with the line
to change and the line to add (``after line 12, `nn.Conv2d(16, 32, kernel_size=3,
padding=1),`, add `nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32),
nn.ReLU(),```) is an edit it can copy. :func:`hint` writes that edit for each
instruction of Table 2 from the parent's source, parsed with :mod:`ast` and never run;
where the code is not in a shape it understands (layers built in loops, channel counts in
variables) it returns "" and the prompt keeps the general how-to (``prompts.HOW_TO``).

The edits are chosen so that nothing else has to change where possible (a conv block that
keeps its channels, a hidden layer as wide as its input), and so that the instruction
checker (:mod:`lemo_nade.compliance`) sees them: a residual join of a block's output with
its input, a new ``nn.init`` call, a higher ``WEIGHT_DECAY``.

Pure: no torch.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable
from dataclasses import dataclass

CONV, LINEAR = "Conv2d", "Linear"
DROPOUTS = frozenset({"Dropout", "Dropout2d", "Dropout1d"})
# (in, out) argument names of the layers whose widths an edit changes
WIDTH_ARGS = {CONV: ("in_channels", "out_channels"), LINEAR: ("in_features", "out_features")}


@dataclass(frozen=True)
class Layer:
    """One ``nn.X(...)`` constructor call in ``__init__``."""

    kind: str  # "Conv2d", "Linear", "Dropout", "BatchNorm2d", ...
    line: int
    text: str  # the call as written
    node: ast.Call
    owner: str  # the ``self.<owner>`` it is assigned to, itself or inside an nn.Sequential
    in_sequential: bool

    def width(self, which: int) -> int | None:
        """The literal in (0) or out (1) width of a Conv2d or Linear; None otherwise."""
        names = WIDTH_ARGS.get(self.kind)
        if names is None:
            return None
        value = next((k.value for k in self.node.keywords if k.arg == names[which]), None)
        if value is None and len(self.node.args) > which:
            value = self.node.args[which]
        if isinstance(value, ast.Constant) and type(value.value) is int:
            return value.value
        return None

    def with_widths(self, new_in: int, new_out: int) -> str:
        """This call with its in and out widths replaced, as source."""
        call = copy.deepcopy(self.node)
        names = WIDTH_ARGS[self.kind]
        for which, value in ((0, new_in), (1, new_out)):
            kw = next((k for k in call.keywords if k.arg == names[which]), None)
            if kw is not None:
                kw.value = ast.Constant(value)
            else:
                call.args[which] = ast.Constant(value)
        return ast.unparse(call)


@dataclass(frozen=True)
class Model:
    layers: list[Layer]
    forward: list[tuple[int, str]]  # (line, statement) of forward's top-level statements
    weight_decay: float | None  # the module constant, 0 when absent, None when not a number
    inits: frozenset[str]  # nn.init functions called anywhere

    def of(self, *kinds: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.kind in kinds]

    def applied(self, owner: str) -> tuple[int, str] | None:
        """forward's last statement that uses ``self.<owner>``."""
        uses = [(n, s) for n, s in self.forward if f"self.{owner}" in s]
        return uses[-1] if uses else None


def hint(code: str, instruction: str) -> str:
    """The concrete edit for ``instruction`` in ``code``; "" when none can be given."""
    model = read(code)
    write = EDITS.get(instruction)
    if model is None or write is None:
        return ""
    try:
        return write(model)
    except (ValueError, IndexError, TypeError):
        return ""


def read(code: str) -> Model | None:
    """The layers ``class Net``'s ``__init__`` assigns to attributes, and forward's lines."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    net = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Net"), None)
    if net is None:
        return None
    methods = {f.name: f for f in net.body if isinstance(f, ast.FunctionDef)}
    if "__init__" not in methods or "forward" not in methods:
        return None
    layers: list[Layer] = []
    for stmt in methods["__init__"].body:
        if not isinstance(stmt, ast.Assign) or not isinstance(stmt.value, ast.Call):
            continue
        target = stmt.targets[0]
        if not (isinstance(target, ast.Attribute) and _is_self_attr(target)):
            continue
        owner, call = target.attr, stmt.value
        inner = call.args if _kind(call) == "Sequential" else [call]
        for node in inner:
            if isinstance(node, ast.Call) and _kind(node):
                text = ast.get_source_segment(code, node) or ast.unparse(node)
                layers.append(Layer(_kind(node), node.lineno, text, node, owner, node is not call))
    forward = [
        (s.lineno, (ast.get_source_segment(code, s) or ast.unparse(s)).splitlines()[0])
        for s in methods["forward"].body
    ]
    return Model(layers, forward, _weight_decay(tree), _inits(tree))


def _is_self_attr(node: ast.AST | None) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def _kind(call: ast.Call) -> str:
    """``X`` for ``nn.X(...)`` / ``torch.nn.X(...)``; "" for anything else."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, (ast.Name, ast.Attribute)):
        base = func.value.id if isinstance(func.value, ast.Name) else func.value.attr
        return func.attr if base == "nn" else ""
    return ""


def _weight_decay(tree: ast.Module) -> float | None:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "WEIGHT_DECAY" for t in stmt.targets
        ):
            return _literal(stmt.value)
    return 0.0


def _literal(node: ast.expr | None) -> float | None:
    """A number written out (not a bool); None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return None if isinstance(node.value, bool) else float(node.value)
    return None


def _inits(tree: ast.Module) -> frozenset[str]:
    return frozenset(
        n.func.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Attribute)
        and n.func.value.attr == "init"
    )


# -- the edits, one per instruction ---------------------------------------------------------


def _at(layer: Layer) -> str:
    return f"`{layer.text}` (line {layer.line})"


def _insert_after(model: Model, layer: Layer, new_layers: str, attr: str, use: str) -> str:
    """Where new layers go: inside the same nn.Sequential right after ``layer``, or as a
    new attribute applied in forward right after ``layer``'s own line."""
    if layer.in_sequential:
        end = [x for x in model.layers if x.owner == layer.owner][-1]
        last = f"the last layer of `self.{layer.owner}`"
        return f"right after {_at(end)}, {last}, add `{new_layers},`"
    applied = model.applied(layer.owner)
    where = f"right after line {applied[0]} `{applied[1]}`" if applied else "where it belongs"
    return (
        f"in __init__ add `self.{attr} = nn.Sequential({new_layers})`, and in forward, "
        f"{where}, add `{use}`"
    )


def _add_conv(model: Model) -> str:
    last = model.of(CONV)[-1]
    c = last.width(1)
    if c is None:
        return ""
    block = f"nn.Conv2d({c}, {c}, kernel_size=3, padding=1), nn.BatchNorm2d({c}), nn.ReLU()"
    where = _insert_after(model, last, block, "conv_extra", "x = self.conv_extra(x)")
    return f"{where} (same {c} channels in and out, so nothing else changes)"


def _remove_conv(model: Model) -> str:
    """Delete a conv that keeps its channels (nothing else changes); else the last one,
    with the classifier's input size it then gets."""
    convs = model.of(CONV)
    if len(convs) < 2:
        return ""
    same = [c for c in convs[1:] if c.width(0) is not None and c.width(0) == c.width(1)]
    if same:
        return _delete(model, same[-1], "the BatchNorm2d and ReLU right after it")
    last, before = convs[-1], convs[-2]
    c_out, c_new = last.width(1), before.width(1)
    head = model.of(LINEAR)[0] if model.of(LINEAR) else None
    if head is None or c_new is None or head.width(0) != c_out or head.width(1) is None:
        return ""
    delete = _delete(model, last, "the BatchNorm2d and ReLU right after it")
    new_head = head.with_widths(c_new, head.width(1) or 0)
    return delete and f"{delete}; then change {_at(head)} to `{new_head}` ({c_new} inputs)"


def _delete(model: Model, layer: Layer, also: str) -> str:
    """How to delete ``layer``: its line (and ``also``) in an nn.Sequential; its
    attribute and the forward line that applies it, when that line applies nothing else."""
    if layer.in_sequential:
        return f"delete {_at(layer)} and {also}"
    applied = model.applied(layer.owner)
    others = [x.owner for x in model.of(CONV, LINEAR) if x.owner != layer.owner]
    if applied is None or any(f"self.{o}(" in applied[1] for o in others):
        return ""
    return f"delete {_at(layer)} and, in forward, line {applied[0]} `{applied[1]}`"


def _with_rate(layer: Layer, p: float) -> str:
    call = copy.deepcopy(layer.node)
    call.args, call.keywords = [ast.Constant(p)], []
    return ast.unparse(call)


def _rate(layer: Layer) -> float | None:
    given = layer.node.args[0] if layer.node.args else None
    given = next((k.value for k in layer.node.keywords if k.arg == "p"), given)
    return 0.5 if given is None else _literal(given)


def _change_rate(layer: Layer, up: bool) -> str:
    p = _rate(layer)
    if p is None or (up and p >= 0.9) or (not up and p <= 0):
        return ""
    new = round(min(0.5, 0.9) if up and p < 0.5 else (p + 0.1 if up else p / 2), 3)
    return f"change {_at(layer)} to `{_with_rate(layer, new)}` (dropout {p:g} -> {new:g})"


def _add_skip(model: Model) -> str:
    last = model.of(CONV)[-1]
    c = last.width(1)
    applied = model.applied(last.owner)
    if c is None or applied is None:
        return ""
    return (
        f"in __init__ add `self.res = nn.Sequential(nn.Conv2d({c}, {c}, kernel_size=3, "
        f"padding=1), nn.BatchNorm2d({c}), nn.ReLU())`, and in forward, right after line "
        f"{applied[0]} `{applied[1]}`, add `x = x + self.res(x)` (a residual connection: "
        f"the block's input added to its output)"
    )


def _remove_skip(model: Model) -> str:
    joins = [(n, s) for n, s in model.forward if "+" in s and "=" in s]
    if not joins:
        return ""
    line, stmt = joins[0]
    return f"in forward, line {line} `{stmt}`: drop the `+` and its second operand"


def _classifier(model: Model) -> Layer:
    return model.of(LINEAR)[-1]


def _add_dense(model: Model) -> str:
    head = _classifier(model)
    n = head.width(0)
    if n is None:
        return ""
    block = f"nn.Linear({n}, {n}), nn.ReLU()"
    if head.in_sequential:
        return f"right before {_at(head)}, add `{block},` (as wide as its input)"
    applied = model.applied(head.owner)
    where = f"right before line {applied[0]} `{applied[1]}`" if applied else "before it"
    return (
        f"in __init__ add `self.hidden = nn.Sequential({block})`, and in forward, {where}, "
        "add `x = self.hidden(x)`"
    )


def _remove_dense(model: Model) -> str:
    linears = model.of(LINEAR)
    if len(linears) < 2:
        return ""
    hidden, head = linears[-2], linears[-1]
    n_in, n_out = hidden.width(0), head.width(1)
    if n_in is None or n_out is None:
        return ""
    return (
        f"delete {_at(hidden)} and the activation after it, and change the classifier "
        f"{_at(head)} to `{head.with_widths(n_in, n_out)}`"
    )


def _scale_conv(factor: float) -> Callable[[Model], str]:
    def write(model: Model) -> str:
        convs = model.of(CONV)
        first = convs[0]
        c_in, c = first.width(0), first.width(1)
        if c_in is None or c is None:
            return ""
        new = max(4, int(c * factor))
        change = f"change {_at(first)} to `{first.with_widths(c_in, new)}`"
        norms = [x for x in model.of("BatchNorm2d") if x.text.startswith(f"nn.BatchNorm2d({c}")]
        users = [f"{_at(norms[0])} to `nn.BatchNorm2d({new})`"] if norms else []
        nxt = convs[1] if len(convs) > 1 else None
        if nxt is not None and nxt.width(0) == c and nxt.width(1) is not None:
            users.append(f"{_at(nxt)} to `{nxt.with_widths(new, nxt.width(1) or 0)}`")
        elif nxt is None:
            head = _classifier(model) if model.of(LINEAR) else None
            if head is None or head.width(0) != c or head.width(1) is None:
                return ""
            users.append(f"{_at(head)} to `{head.with_widths(new, head.width(1) or 0)}`")
        else:
            return ""
        return f"{change} ({c} -> {new} channels), and then {' and '.join(users)}"

    return write


def _scale_dense(factor: float) -> Callable[[Model], str]:
    def write(model: Model) -> str:
        linears = model.of(LINEAR)
        if len(linears) < 2:
            return _add_dense(model) if factor > 1 else ""
        hidden, nxt = linears[-2], linears[-1]
        n_in, n, n_out = hidden.width(0), hidden.width(1), nxt.width(1)
        if n_in is None or n is None or n_out is None or nxt.width(0) != n:
            return ""
        new = max(4, int(n * factor))
        return (
            f"change {_at(hidden)} to `{hidden.with_widths(n_in, new)}` and {_at(nxt)} to "
            f"`{nxt.with_widths(new, n_out)}` ({n} -> {new} units)"
        )

    return write


def _add_dropout(model: Model) -> str:
    drops = model.of(*DROPOUTS)
    if drops:
        return _change_rate(drops[0], up=True)
    head = _classifier(model)
    if head.in_sequential:
        return f"right before {_at(head)}, add `nn.Dropout(0.3),`"
    applied = model.applied(head.owner)
    if applied is None:
        return ""
    return (
        "in __init__ add `self.dropout = nn.Dropout(0.3)`, and in forward, right before "
        f"line {applied[0]} `{applied[1]}`, add `x = self.dropout(x)`"
    )


def _remove_dropout(model: Model) -> str:
    drops = model.of(*DROPOUTS)
    return _change_rate(drops[0], up=False) if drops else ""


def _init(model: Model) -> str:
    fn = "xavier_uniform_" if "kaiming_normal_" in model.inits else "kaiming_normal_"
    return (
        "at the end of __init__ add:\n"
        "        for m in self.modules():\n"
        "            if isinstance(m, (nn.Conv2d, nn.Linear)):\n"
        f"                nn.init.{fn}(m.weight)"
    )


def _regularise(up: bool) -> Callable[[Model], str]:
    def write(model: Model) -> str:
        wd = model.weight_decay
        if wd is None:
            return ""
        if up:
            new = 1e-4 if wd <= 0 else wd * 10
            return f"set the module constant `WEIGHT_DECAY = {new:g}` (now {wd:g}), above the class"
        if wd > 0:
            return f"set `WEIGHT_DECAY = {wd / 10:g}` (now {wd:g})"
        drops = model.of(*DROPOUTS)
        return _change_rate(drops[0], up=False) if drops else ""

    return write


EDITS: dict[str, Callable[[Model], str]] = {
    "ACL": _add_conv,
    "RCL": _remove_conv,
    "ASC": _add_skip,
    "RSC": _remove_skip,
    "ADL": _add_dense,
    "RDL": _remove_dense,
    "AMK": _scale_conv(2.0),
    "RK": _scale_conv(0.5),
    "AMN": _scale_dense(2.0),
    "RN": _scale_dense(0.5),
    "AD": _add_dropout,
    "RD": _remove_dropout,
    "AWI": _init,
    "AR": _regularise(up=True),
    "RR": _regularise(up=False),
}
