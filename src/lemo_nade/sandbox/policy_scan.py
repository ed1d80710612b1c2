"""One walk over candidate code collecting what the policy's alias analysis needs.

Pure: no torch import. :func:`scan` records every place a value is bound to a name
(:class:`Pair`: import, assignment, tuple unpacking, walrus, ``for``, ``with``,
comprehension, ``except``, ``match``, parameters and their defaults, ``return``), every
call argument (any parameter may receive any of them), how often each bare name is bound
and by what (so "``self`` is only ever a method's first parameter" can be decided), and the
candidate's classes and methods. :mod:`lemo_nade.sandbox.policy_flow` solves it.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass, field

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
Function = ast.FunctionDef | ast.AsyncFunctionDef
_ACCESSORS = frozenset({"setter", "getter", "deleter"})  # @x.setter on a property
# Load/Store, +, ==, not, and: no names, no children; a third of all nodes, so skipped
_MARKERS = (ast.expr_context, ast.operator, ast.cmpop, ast.unaryop, ast.boolop)


@dataclass
class Pair:
    """``names`` receive the values of ``sources`` (plus the pool, plus ``.suffix``)."""

    names: tuple[str, ...]
    sources: tuple[ast.AST, ...]
    pool: bool = False  # parameters: any call argument may arrive here
    suffixes: tuple[str, ...] = ()  # ``case object(ops=o)`` binds o to subject.ops


@dataclass
class Scan:
    """What one walk over the module collects."""

    nodes: list[ast.AST] = field(default_factory=list)  # in source order, but _MARKERS
    binds: Counter[str] = field(default_factory=Counter)  # binding sites per bare name
    import_binds: Counter[str] = field(default_factory=Counter)
    class_binds: Counter[str] = field(default_factory=Counter)
    first_binds: Counter[str] = field(default_factory=Counter)  # as a method's self/cls
    imports: dict[str, str] = field(default_factory=dict)  # local name -> dotted path
    pairs: list[Pair] = field(default_factory=list)
    pool: list[ast.AST] = field(default_factory=list)  # every call argument
    raises: list[ast.AST] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)
    receivers: list[tuple[ast.expr, tuple[ast.AST, ...]]] = field(default_factory=list)
    methods: dict[int, tuple[Function, str]] = field(
        default_factory=dict
    )  # id(def) -> (def, "method" | "classmethod" | "static" | "plain")
    loads: set[str] = field(default_factory=set)  # bare names read
    returns: dict[int, list[ast.AST]] = field(default_factory=dict)  # id(def) -> values
    # every ``x.attr``, with the innermost method around it (or None)
    reads: list[tuple[ast.Attribute, Function | None]] = field(default_factory=list)


def target_names(target: ast.AST) -> tuple[str, ...]:
    """The names an assignment target binds (``self.t = v`` binds the attribute name t)."""
    if isinstance(target, ast.Name):
        return (target.id,)
    if isinstance(target, ast.Attribute):
        return (target.attr,)
    if isinstance(target, ast.Subscript | ast.Starred):  # d[k] = v puts v into d
        return target_names(target.value)
    if isinstance(target, ast.Tuple | ast.List):
        return tuple(n for elt in target.elts for n in target_names(elt))
    return ()


def root(node: ast.AST) -> ast.AST:
    """The object a chain such as ``torch.no_grad()`` or ``a.b[0].c`` starts from."""
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _walk(tree: ast.Module, found: Scan) -> None:
    """Pre-order walk: source order, and the enclosing function and method of each node."""
    is_method: set[int] = set()
    stack: list[tuple[ast.AST, ast.AST | None, Function | None]] = [(tree, None, None)]
    while stack:
        node, func, method = stack.pop()
        found.nodes.append(node)
        if isinstance(node, ast.Return | ast.Yield | ast.YieldFrom) and node.value and func:
            found.returns.setdefault(id(func), []).append(node.value)
        elif isinstance(node, ast.Attribute):
            found.reads.append((node, method))
        elif isinstance(node, ast.ClassDef):
            is_method.update(id(item) for item in node.body if isinstance(item, FUNCTIONS))
        if isinstance(node, ast.Lambda):
            func = node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            func = node
            if id(node) in is_method:
                method = node
                found.methods[id(node)] = (node, "method")
        children = [c for c in ast.iter_child_nodes(node) if not isinstance(c, _MARKERS)]
        stack.extend((child, func, method) for child in reversed(children))


def _decorator_kind(func: Function, imports: dict[str, str]) -> str:
    """ "static"/"classmethod"/"method"; "plain" when a decorator could call it with anything.

    Library decorators (``torch.no_grad()``) pass the arguments on; one the candidate
    wrote receives the function and may call it with a module as ``self``.
    """
    kind = "method"
    for deco in func.decorator_list:
        start = root(deco)
        name = deco.id if isinstance(deco, ast.Name) else None
        if name in ("staticmethod", "classmethod"):
            kind = "static" if name == "staticmethod" else "classmethod"
        elif name == "property" or (isinstance(deco, ast.Attribute) and deco.attr in _ACCESSORS):
            continue
        elif not (isinstance(start, ast.Name) and start.id in imports):
            return "plain"
    return kind


def _bind_arguments(node: Function | ast.Lambda, scan: Scan, kind: str) -> None:
    """Parameters receive their defaults and any call argument (a method's self has no
    default; it still gets the arguments, for the method called off its class)."""
    args = node.args
    first_is_self = kind in ("method", "classmethod")
    positional = [*args.posonlyargs, *args.args]
    params = positional + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    defaults = tuple(d for d in (*args.defaults, *args.kw_defaults) if d is not None)
    for i, param in enumerate(params):
        scan.binds[param.arg] += 1
        own = first_is_self and i == 0 and len(args.defaults) < len(positional)
        if own:
            scan.first_binds[param.arg] += 1
        scan.pairs.append(Pair((param.arg,), () if own else defaults, pool=True))


def _scan_definition(node: ast.AST, scan: Scan) -> None:
    if isinstance(node, ast.ClassDef):
        scan.binds[node.name] += 1
        scan.class_binds[node.name] += 1
    elif isinstance(node, FUNCTIONS):
        scan.binds[node.name] += 1
        scan.pairs.append(Pair((node.name,), tuple(scan.returns.get(id(node), ()))))
        kind = scan.methods[id(node)][1] if id(node) in scan.methods else "plain"
        _bind_arguments(node, scan, kind)
    elif isinstance(node, ast.Lambda):
        _bind_arguments(node, scan, "plain")


def _scan_import(node: ast.Import | ast.ImportFrom, scan: Scan) -> None:
    for alias in node.names:
        if isinstance(node, ast.Import):
            local = alias.asname or alias.name.split(".")[0]
            path = alias.name if alias.asname else local
        elif node.module and not node.level:
            local, path = alias.asname or alias.name, f"{node.module}.{alias.name}"
        else:
            continue
        scan.imports[local] = path
        scan.binds[local] += 1
        scan.import_binds[local] += 1


def _scan_binding(node: ast.AST, scan: Scan) -> None:
    pair = scan.pairs.append
    if isinstance(node, ast.Assign):
        pair(Pair(tuple(n for t in node.targets for n in target_names(t)), (node.value,)))
    elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr) and node.value:
        pair(Pair(target_names(node.target), (node.value,)))
    elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
        pair(Pair(target_names(node.target), (node.iter,)))
    elif isinstance(node, ast.withitem) and node.optional_vars is not None:
        pair(Pair(target_names(node.optional_vars), (node.context_expr,)))
    elif isinstance(node, ast.Match):
        for case in node.cases:
            pair(Pair(_case_names(case), (node.subject,), suffixes=_kwd(case)))


def _case_names(case: ast.match_case) -> tuple[str, ...]:
    names = (getattr(sub, n, None) for sub in ast.walk(case.pattern) for n in ("name", "rest"))
    return tuple(n for n in names if isinstance(n, str))


def _kwd(case: ast.match_case) -> tuple[str, ...]:
    classes = (sub for sub in ast.walk(case.pattern) if isinstance(sub, ast.MatchClass))
    return tuple(a for sub in classes for a in sub.kwd_attrs)


def _scan_node(node: ast.AST, scan: Scan) -> None:
    if isinstance(node, ast.Name):
        if isinstance(node.ctx, ast.Load):
            scan.loads.add(node.id)
        else:
            scan.binds[node.id] += 1
    elif isinstance(node, ast.Call):
        args = (*node.args, *(k.value for k in node.keywords))
        scan.pool.extend(args)
        if isinstance(node.func, ast.Attribute) and args:
            scan.receivers.append((node.func.value, args))  # xs.append(torch) fills xs
    elif isinstance(node, ast.ClassDef | ast.Lambda | ast.FunctionDef | ast.AsyncFunctionDef):
        _scan_definition(node, scan)
    elif isinstance(node, ast.Raise):
        scan.raises += [e for e in (node.exc, node.cause) if e is not None]
    elif isinstance(node, ast.ExceptHandler) and node.name:
        scan.binds[node.name] += 1
        scan.handlers.append(node.name)
    elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
        scan.binds[node.name] += 1
    elif isinstance(node, ast.MatchMapping) and node.rest:
        scan.binds[node.rest] += 1
    elif isinstance(node, ast.Global | ast.Nonlocal):
        scan.binds.update(node.names)
    elif not isinstance(node, ast.Import | ast.ImportFrom):
        _scan_binding(node, scan)


def scan(tree: ast.Module) -> Scan:
    """Collect bindings: the walk, then imports (decorators need them), then the rest."""
    result = Scan()
    _walk(tree, result)
    for node in result.nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            _scan_import(node, result)
    for key, (func, _) in result.methods.items():
        result.methods[key] = (func, _decorator_kind(func, result.imports))
    for node in result.nodes:
        _scan_node(node, result)
    if result.handlers:
        result.pairs.append(Pair(tuple(result.handlers), tuple(result.raises)))
    return result
