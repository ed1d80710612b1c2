"""Where a name can point: the alias analysis behind the policy's qualname and private rules.

Pure: no torch import. Flow-insensitive and conservative by design: a name (or an
attribute name: ``self.t = torch`` binds ``t``) holds the union of everything ever bound
to it anywhere (:mod:`lemo_nade.sandbox.policy_scan` lists the binding forms; any
parameter may receive any call argument), and containers, calls and subscripts pass
their contents on, so ``t = torch; t.ops``, ``[torch][0].ops``, ``(lambda: torch)().ops``,
``def f(t=torch): t.ops`` and ``xs.append(torch); xs[0].ops`` all name ``torch.ops``.

Values are tracked only inside a small *domain*: every prefix of a refused path
(``torch``, ``torch.utils``, ``typing``...). Nothing outside it can lead to a refusal, so
it is dropped; model code rarely hands a bare module around, so most names hold nothing
and the fixed point costs a few milliseconds. Names such as ``load`` or ``os`` need no
flow at all: the attribute rule refuses them on any object.

The second question is when ``x._private`` is the candidate's own: ``x`` is the first
parameter of one of its methods, a name bound no other way anywhere, in a method that is
never read off anything but ``self`` or ``super()`` (``Net.g(collections)`` would call it
with a module as ``self``); or ``x`` is one of its classes, or ``super()``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence

from lemo_nade.sandbox.policy_scan import Pair, Scan, scan, target_names

MAX_ROUNDS = 64  # the fixed point needs about one round per alias hop; more is refused
_EMPTY: frozenset[str] = frozenset()


def domain_of(qualnames: Iterable[str]) -> frozenset[str]:
    """Every prefix of a refused path: only these values can still lead to a refusal."""
    out: set[str] = set()
    for qualname in qualnames:
        parts = qualname.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(out)


class Flow:
    """The fixed point of :func:`scan`'s bindings, and the questions the rules ask of it."""

    def __init__(self, tree: ast.Module, refused: tuple[str, ...]) -> None:
        self.scan: Scan = scan(tree)
        found = self.scan
        self.domain = domain_of(refused)
        rebound = {n for n, count in found.binds.items() if count > found.import_binds[n]}
        self.imports = frozenset(found.imports) - rebound  # names that are only imports
        self.classes = frozenset(
            n for n, count in found.class_binds.items() if found.binds[n] == count
        )
        self.selves = frozenset(
            n for n, count in found.first_binds.items() if found.binds[n] == count
        )
        self.values: dict[str, frozenset[str]] = {}
        for name, path in found.imports.items():
            self._add((name,), frozenset({path}) & self.domain)
        for top in {q.split(".")[0] for q in refused}:  # torch.nn.functional.torch is torch
            self._add((top,), frozenset({top}))
        self.pool = _EMPTY
        self._memo: dict[int, frozenset[str]] = {}
        self.converged = self._solve()
        self.owned = self._owned()

    def _add(self, names: Iterable[str], found: frozenset[str]) -> bool:
        changed = False
        for name in names:
            old = self.values.get(name, _EMPTY)
            if not found <= old:
                self.values[name] = old | found
                changed = True
        return changed

    def _solve(self) -> bool:
        """Rounds of "evaluate every pair against the last round's values, then add".

        Within a round the values do not change, so each expression is evaluated once
        (``self._memo``); a round that adds nothing is the fixed point.
        """
        pairs = self.scan.pairs + [
            Pair(target_names(receiver), args)  # xs.append(torch) fills xs
            for receiver, args in self.scan.receivers
            if not self.read_off_import(receiver)
        ]
        for _ in range(MAX_ROUNDS):
            self._memo = {}
            self.pool = self._union(self.scan.pool)
            updates = []
            for pair in pairs:
                sources = self._union(pair.sources)
                found = sources | self.pool if pair.pool else sources
                for suffix in pair.suffixes:
                    found |= self._extend(sources, suffix)
                if found:
                    updates.append((pair.names, found))
            changed = False
            for names, found in updates:
                changed |= self._add(names, found)
            if not changed:
                return True
        return False

    def read_off_import(self, node: ast.AST) -> bool:
        """``torch.nn.init``: attributes read off an import hold no aliases of their own."""
        while isinstance(node, ast.Attribute):
            node = node.value
        return isinstance(node, ast.Name) and node.id in self.imports

    def _union(self, nodes: Iterable[ast.AST]) -> frozenset[str]:
        out = _EMPTY
        for node in nodes:
            out |= self.value(node)
        return out

    def _extend(self, bases: frozenset[str], attr: str) -> frozenset[str]:
        return frozenset(q for q in (f"{b}.{attr}" for b in bases) if q in self.domain)

    def value(self, node: ast.AST) -> frozenset[str]:
        """The domain values an expression may evaluate to."""
        key = id(node)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self._value(node)
        return found

    def _value(self, node: ast.AST) -> frozenset[str]:
        if isinstance(node, ast.Name):
            return self.values.get(node.id, _EMPTY)
        if isinstance(node, ast.Attribute):
            base = self.value(node.value)
            out = self._extend(base, node.attr) | self.values.get(node.attr, _EMPTY)
            # d.get(k), partial(f, torch).args: an attribute of a container may be its content
            return out if self.read_off_import(node.value) else out | base
        if isinstance(node, ast.Call):  # a call may return its callee's values or its arguments
            args = (*node.args, *(k.value for k in node.keywords))
            return self.value(node.func) | self._union(args)
        if isinstance(node, ast.Subscript | ast.Starred | ast.NamedExpr | ast.Await):
            return self.value(node.value)
        if isinstance(node, ast.Yield | ast.YieldFrom):
            return self.pool  # whatever gen.send() was given
        return self._union(_parts(node))

    def resolve(self, node: ast.AST) -> frozenset[str]:
        """Dotted paths a Name or Attribute may name, one step past the domain."""
        if isinstance(node, ast.Name):
            return self.values.get(node.id, _EMPTY)
        if isinstance(node, ast.Attribute):
            named = frozenset(f"{b}.{node.attr}" for b in self.value(node.value))
            return named | self.values.get(node.attr, _EMPTY)
        return _EMPTY

    def _escaped(self) -> set[str]:
        """Methods read off anything but ``self``/``super()`` (``Net.g``, ``type(x).g``,
        ``k = Net; k.g``) or as a bare name: such a function can be called with anything
        as its first argument."""
        plain = {f.name for f, kind in self.scan.methods.values() if kind == "method"}
        escaped = plain & self.scan.loads
        for node, _ in self.scan.reads:
            if node.attr in plain and not self._bound(node.value):
                escaped.add(node.attr)
        return escaped

    def _bound(self, value: ast.AST) -> bool:
        """``self`` and ``super()``/``super(Cls, self)``: methods read off them are bound."""
        if isinstance(value, ast.Name):
            return value.id in self.selves
        if not (isinstance(value, ast.Call) and _is_super(value.func, self.scan)):
            return False
        args = value.args
        return not args or (
            len(args) == 2 and isinstance(args[1], ast.Name) and args[1].id in self.selves
        )

    def _owned(self) -> frozenset[int]:
        """ids of the ``self.x`` nodes whose ``self`` can only be an instance of the class."""
        if {"property", "classmethod", "staticmethod"} & set(self.scan.binds):
            return frozenset()  # the decorators themselves were replaced
        escaped = self._escaped()
        owned: set[int] = set()
        for node, method in self.scan.reads:
            if method is None or not isinstance(node.value, ast.Name):
                continue
            kind = self.scan.methods[id(method)][1]
            if kind in ("static", "plain") or (kind == "method" and method.name in escaped):
                continue
            positional = [*method.args.posonlyargs, *method.args.args]
            if positional and node.value.id == positional[0].arg in self.selves:
                owned.add(id(node))
        return frozenset(owned)

    def owns(self, node: ast.Attribute) -> bool:
        """Whether ``node`` reads the candidate's own attribute (``self._x``, ``Net._x``)."""
        if id(node) in self.owned:
            return True
        value = node.value
        if isinstance(value, ast.Name):
            return value.id in self.classes
        return isinstance(value, ast.Call) and _is_super(value.func, self.scan) and not value.args


def _is_super(func: ast.AST, found: Scan) -> bool:
    return isinstance(func, ast.Name) and func.id == "super" and "super" not in found.binds


def _parts(node: ast.AST) -> Sequence[ast.AST]:
    """Sub-expressions whose values an expression passes on (containers, operators)."""
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return list(node.elts)
    if isinstance(node, ast.Dict):
        return [k for k in node.keys if k is not None] + list(node.values)
    if isinstance(node, ast.BoolOp):
        return list(node.values)
    if isinstance(node, ast.IfExp):
        return [node.body, node.orelse]
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, ast.Lambda):
        return [node.body]
    if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp):
        return [node.elt]
    if isinstance(node, ast.DictComp):
        return [node.key, node.value]
    return []
