"""What the edits need to know of a parent's source: its layers and where things are.

Parsed with :mod:`ast`, never run. Only the shape small models write is understood:
``class Net`` whose ``__init__`` assigns ``nn.X(...)`` layers to attributes, alone or
inside an ``nn.Sequential(...)``; anything else (layers built in loops, ``ModuleList``)
is simply not listed, and the edits that need it give none.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field

CONV, LINEAR = "Conv2d", "Linear"
DROPOUTS = frozenset({"Dropout", "Dropout2d", "Dropout1d"})
# (in, out) argument names of the layers whose widths an edit changes
WIDTH_ARGS = {CONV: ("in_channels", "out_channels"), LINEAR: ("in_features", "out_features")}


@dataclass(frozen=True)
class Mark:
    """A comment put into the parent's code shown in the prompt, where an edit goes: a
    small model copies the code it is shown, so the place and the change travel with it."""

    line: int
    before: bool  # before ``line`` (else after its statement's last line)
    text: str


@dataclass(frozen=True)
class Edit:
    text: str  # how to do it, in words, quoting the parent's lines
    marks: tuple[Mark, ...] = ()


@dataclass(frozen=True)
class Layer:
    """One ``nn.X(...)`` constructor call in ``__init__``."""

    kind: str  # "Conv2d", "Linear", "Dropout", "BatchNorm2d", ...
    line: int
    end: int  # its last line
    text: str  # the call as written
    node: ast.Call
    owner: str  # the ``self.<owner>`` it is assigned to, itself or inside an nn.Sequential
    in_sequential: bool

    def width(self, which: int) -> int | None:
        """The literal in (0) or out (1) width of a Conv2d or Linear; None otherwise."""
        names = WIDTH_ARGS.get(self.kind)
        if names is None:
            return None
        return int_literal(argument(self.node, which, names[which]))

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
class Statement:
    line: int
    end: int
    text: str  # its first line


@dataclass(frozen=True)
class Model:
    layers: list[Layer]
    assigned: dict[str, int]  # attribute -> the last line of its assignment in __init__
    init_end: int  # __init__'s last line
    forward: list[Statement]  # forward's top-level statements
    class_line: int
    weight_decay: float | None  # the module constant, 0 when absent, None when not a number
    weight_decay_line: int | None
    inits: frozenset[str]  # nn.init functions called anywhere
    read_attrs: frozenset[str] = frozenset()  # the ``self.<name>`` class Net reads anywhere
    statements: dict[str, str] = field(default_factory=dict)  # attribute -> its assignment

    def of(self, *kinds: str) -> list[Layer]:
        """The layers of these kinds that forward uses, in the order it applies them (a
        layer defined but never applied, as small models leave behind, is not one)."""
        used = []
        for layer in self.layers:
            applied = self.applied(layer.owner) if layer.kind in kinds else None
            if applied is not None:
                used.append((applied.line, layer.line, layer))
        return [layer for _, _, layer in sorted(used, key=lambda u: (u[0], u[1]))]

    def applied(self, owner: str) -> Statement | None:
        """forward's last statement that uses ``self.<owner>``."""
        uses = [s for s in self.forward if f"self.{owner}" in s.text]
        return uses[-1] if uses else None


def read(code: str) -> Model | None:
    """The layers ``class Net``'s ``__init__`` assigns to attributes, and forward's lines."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    net = net_class(tree)
    if net is None:
        return None
    methods = {f.name: f for f in net.body if isinstance(f, ast.FunctionDef)}
    if "__init__" not in methods or "forward" not in methods:
        return None
    init = methods["__init__"]
    layers: list[Layer] = []
    assigned: dict[str, int] = {}
    statements: dict[str, str] = {}
    for stmt in init.body:
        if not isinstance(stmt, ast.Assign) or not isinstance(stmt.value, ast.Call):
            continue
        target = stmt.targets[0]
        if not (isinstance(target, ast.Attribute) and is_self_attr(target)):
            continue
        owner, call = target.attr, stmt.value
        assigned[owner] = stmt.end_lineno or stmt.lineno
        statements[owner] = ast.get_source_segment(code, stmt) or ast.unparse(stmt)
        inner = call.args if layer_kind(call) == "Sequential" else [call]
        for node in inner:
            if isinstance(node, ast.Call) and layer_kind(node):
                text = ast.get_source_segment(code, node) or ast.unparse(node)
                end = node.end_lineno or node.lineno
                layers.append(
                    Layer(layer_kind(node), node.lineno, end, text, node, owner, node is not call)
                )
    forward = [
        Statement(
            s.lineno, s.end_lineno or s.lineno,
            (ast.get_source_segment(code, s) or ast.unparse(s)).splitlines()[0],
        )
        for s in methods["forward"].body
    ]  # fmt: skip
    wd_line, wd = _weight_decay(tree)
    init_end = init.body[-1].end_lineno or init.body[-1].lineno
    read_attrs = frozenset(n.attr for n in self_attributes(net) if isinstance(n.ctx, ast.Load))
    return Model(
        layers, assigned, init_end, forward, net.lineno, wd, wd_line, _inits(tree), read_attrs,
        statements,
    )  # fmt: skip


def net_class(tree: ast.Module) -> ast.ClassDef | None:
    """The module's ``class Net``, or None."""
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Net"), None)


def uncreated(net: ast.ClassDef) -> list[str]:
    """The ``self.<name>`` the class reads and never assigns (nor defines as a method), in
    the order first read: a layer forward calls that ``__init__`` lost."""
    attrs = self_attributes(net)
    stored = assigned(net)
    methods = {f.name for f in net.body if isinstance(f, ast.FunctionDef)}
    read = dict.fromkeys(a.attr for a in attrs if isinstance(a.ctx, ast.Load))
    return [name for name in read if name not in stored and name not in methods]


def assigned(net: ast.ClassDef | None) -> set[str]:
    """The ``self.<name>`` attributes the class assigns anywhere."""
    return {a.attr for a in self_attributes(net) if not isinstance(a.ctx, ast.Load)}


def self_attributes(node: ast.AST | None) -> list[ast.Attribute]:
    """Every ``self.<name>`` under ``node``, read or assigned (none for None)."""
    nodes = ast.walk(node) if node is not None else iter(())
    return [n for n in nodes if isinstance(n, ast.Attribute) and is_self_attr(n)]


def attribute_assignment(text: str) -> ast.Assign | None:
    """``text`` when it is one ``<name>.x = ...`` assignment (a trailing comma, as inside
    a call's arguments, dropped: ``self.x = nn.Sequential(...),``); None otherwise."""
    try:
        tree = ast.parse(text.strip())
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    node = tree.body[0] if len(tree.body) == 1 else None
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
        return None
    if not isinstance(node.targets[0], ast.Attribute):
        return None
    if isinstance(node.value, ast.Tuple) and len(node.value.elts) == 1:
        node.value = node.value.elts[0]
    return node


def is_self_attr(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id == "self"


def layer_kind(call: ast.Call) -> str:
    """``X`` for ``nn.X(...)`` / ``torch.nn.X(...)``; "" for anything else."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, (ast.Name, ast.Attribute)):
        base = func.value.id if isinstance(func.value, ast.Name) else func.value.attr
        return func.attr if base == "nn" else ""
    return ""


def argument(call: ast.Call, position: int, name: str) -> ast.expr | None:
    """The argument of ``call`` given as ``name=`` or at ``position``; None when absent."""
    value = next((k.value for k in call.keywords if k.arg == name), None)
    if value is None and len(call.args) > position:
        value = call.args[position]
    return value


def int_literal(node: ast.expr | None) -> int | None:
    """An integer written out (not a bool); None for anything else."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def _weight_decay(tree: ast.Module) -> tuple[int | None, float | None]:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "WEIGHT_DECAY" for t in stmt.targets
        ):
            return stmt.lineno, literal(stmt.value)
    return None, 0.0


def literal(node: ast.expr | None) -> float | None:
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


def unused_layers(code: str) -> list[str]:
    """The ``self.<name>`` layers ``class Net``'s ``__init__`` creates (``nn.X(...)``,
    alone or an ``nn.Sequential``) that nothing else reads: no other method, nor another
    line of ``__init__`` (a layer passed into a container is used). A 0.5B model asked to
    add a conv layer often added it to ``__init__`` only, and the trained child was its
    parent with dead weights. Empty when the code is not in a shape :func:`read` knows."""
    model = read(code)
    if model is None:
        return []
    created = {layer.owner: layer.line for layer in model.layers}
    return sorted((o for o in created if o not in model.read_attrs), key=lambda o: created[o])
