"""Static policy for candidate model code: an AST check before any child process starts.

Pure: no torch import. This is a *fast filter* that turns the common ways generated
code reaches outside a model (imports of ``os``/``subprocess``, ``eval``, dunder
walks such as ``().__class__.__base__``, ``torch.load``) into a fast, explainable
``FAILED_POLICY`` that the LLM can repair. It is not the security boundary: Python
cannot be sandboxed by inspecting source. Containment is the process split and the
kernel confinement of :mod:`lemo_nade.sandbox`.

Rules (each rejection reads ``rule: detail``; the tables are data in
:mod:`lemo_nade.sandbox.policy_rules`): ``import`` (an allow-list of module roots),
``name`` (builtins such as ``eval``/``open``/``getattr``, also as ``from`` imports),
``private`` (``_x`` on anything but the candidate's own ``self``, classes and
``super()``: ``torch._C``, ``c = collections; c._sys``), ``qualname`` (torch's loaders,
savers and extension doors, ``typing.get_type_hints``, *after following aliases*:
``t = torch; t.ops``, ``[torch][0].hub``, ``def f(t=torch)``; see
:mod:`lemo_nade.sandbox.policy_flow`), ``attribute`` (module, loader and frame names
refused on *any* object, so no alias or container hides them: ``x.os``,
``enum.bltns``, ``F.np.load``, ``torch.torch.load``, ``gi_frame.f_builtins``),
``dunder`` (in names and in strings), ``annotation`` (string annotations are parsed and
checked with the same rules, since ``typing.get_type_hints`` evaluates them), ``alias``
(names passed on through more hops than the analysis follows) and ``net`` (exactly one
top-level ``class Net``). Extend a table (or pass your own :class:`Policy`) rather than
adding branches.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from lemo_nade.records import Status
from lemo_nade.sandbox.policy_flow import MAX_ROUNDS, Flow
from lemo_nade.sandbox.policy_rules import DEFAULT_POLICY, Policy

__all__ = ["DEFAULT_POLICY", "NODE_RULES", "Policy", "check"]


_DUNDER = re.compile(r"__\w+__")


@dataclass
class _Context:
    policy: Policy
    flow: Flow  # where each name may point
    # parsed string annotations, alive until the check ends: the flow memoises by id()
    annotations: list[ast.AST] = field(default_factory=list)


Rule = Callable[[ast.AST, _Context], "str | None"]


def check(code: str, policy: Policy = DEFAULT_POLICY) -> tuple[Status, str] | None:
    """None when ``code`` passes; else ``(FAILED_SYNTAX | FAILED_POLICY, message)``.

    The message names the rule and the line, so it can go straight back to an LLM.
    """
    try:
        tree = ast.parse(code)
    # ValueError: null bytes; RecursionError/MemoryError: absurdly deep nesting
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        line = getattr(exc, "lineno", None)
        where = f"line {line}: " if line else ""
        return Status.FAILED_SYNTAX, f"syntax: {where}{getattr(exc, 'msg', None) or exc}"
    try:
        flow = Flow(tree, policy.forbidden_qualnames)
        detail = _node_rules(_Context(policy, flow))
    except RecursionError:  # expressions nested deeper than the analysis follows
        return Status.FAILED_POLICY, "alias: expressions are nested too deeply to follow"
    if detail is not None:
        return Status.FAILED_POLICY, detail
    if not flow.converged:  # what the rules saw may be incomplete: refuse, do not guess
        return Status.FAILED_POLICY, (
            f"alias: names are handed on through more than {MAX_ROUNDS} steps; "
            "use imported modules directly"
        )
    detail = _net_rule(tree, policy)
    if detail is not None:
        return Status.FAILED_POLICY, f"net: {detail}"
    return None


def _node_rules(ctx: _Context) -> str | None:
    """The first objection, as ``rule: line N: detail``, in source order."""
    for node in ctx.flow.scan.nodes:
        for rule_name, rule in NODE_RULES:
            detail = rule(node, ctx)
            if detail is not None:
                line = getattr(node, "lineno", None)
                where = f"line {line}: " if line else ""
                return f"{rule_name}: {where}{detail}"
    return None


# ---- node rules: each sees every node and returns a detail when it objects -----------


def _import_rule(node: ast.AST, ctx: _Context) -> str | None:
    for module in _imported_modules(node):
        if module.split(".")[0] not in ctx.policy.allowed_import_roots:
            allowed = ", ".join(sorted(ctx.policy.allowed_import_roots))
            return f"import of {module!r} is not allowed; allowed modules: {allowed}"
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return "relative imports are not allowed"
        if any(a.name == "*" for a in node.names):
            return f"'from {node.module} import *' is not allowed; import names explicitly"
    return None


def _name_rule(node: ast.AST, ctx: _Context) -> str | None:
    names: list[str] = []
    if isinstance(node, ast.Name):
        names = [node.id]
    elif isinstance(node, ast.ImportFrom):
        names = [a.name for a in node.names] + [a.asname for a in node.names if a.asname]
    for name in names:
        if name in ctx.policy.forbidden_names:
            return f"{name!r} is not allowed in model code"
    return None


def _attribute_rule(node: ast.AST, ctx: _Context) -> str | None:
    names: list[str] = []
    if isinstance(node, ast.Attribute):
        names = [node.attr]
    elif isinstance(node, ast.ImportFrom):  # ``from torch import os`` is torch.os
        names = [a.name for a in node.names] + (node.module or "").split(".")[1:]
    elif isinstance(node, ast.Import):  # ``import torch.fx as fx`` is fx = torch.fx
        names = [part for a in node.names if a.asname for part in a.name.split(".")[1:]]
    elif isinstance(node, ast.MatchClass):  # ``case object(os=o)`` reads the attribute os
        names = list(node.kwd_attrs)
    for name in names:
        if name in ctx.policy.forbidden_attributes:
            return f"attribute {name!r} is not allowed in model code"
    return None


def _private_rule(node: ast.AST, ctx: _Context) -> str | None:
    allowed = ctx.policy.allowed_dunders
    if isinstance(node, ast.Attribute):
        if _is_private(node.attr, allowed) and not ctx.flow.owns(node):
            return (
                f"{_shown(node)}: private attribute {node.attr!r} of something other than "
                "self, your own classes or super(); use the public torch API"
            )
    elif isinstance(node, ast.MatchClass):
        for attr in node.kwd_attrs:
            if _is_private(attr, allowed):
                return f"case {_shown(node)}: private attribute {attr!r} is not allowed"
    for qualname in _import_paths(node):
        for part in qualname.split(".")[1:]:
            if _is_private(part, allowed):
                return (
                    f"{qualname}: private module internals ({part}) are not allowed; "
                    "use the public torch API"
                )
    return None


def _annotation_rule(node: ast.AST, ctx: _Context) -> str | None:
    """String annotations are code that typing.get_type_hints() evaluates: check them too."""
    for annotation in _annotations(node):
        if not (isinstance(annotation, ast.Constant) and isinstance(annotation.value, str)):
            continue
        try:
            tree = ast.parse(annotation.value, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return f"string annotation {annotation.value[:40]!r} is not a valid expression"
        ctx.annotations.append(tree)
        for inner in ast.walk(tree):
            for rule_name, rule in NODE_RULES:
                detail = rule(inner, ctx)
                if detail is not None:
                    return (
                        f"in the string annotation {annotation.value[:40]!r}: {rule_name}: {detail}"
                    )
    return None


def _qualname_rule(node: ast.AST, ctx: _Context) -> str | None:
    imported = isinstance(node, ast.Import | ast.ImportFrom)
    paths = frozenset(_import_paths(node)) if imported else ctx.flow.resolve(node)
    for qualname in sorted(paths):
        for banned in ctx.policy.forbidden_qualnames:
            if qualname == banned or qualname.startswith(banned + "."):
                shown = "" if imported else _shown(node)
                via = f"; {shown} is {qualname}" if shown and shown != qualname else ""
                return (
                    f"{banned} is not allowed in model code (no loading, saving, "
                    f"extensions or evaluating strings as code){via}"
                )
    return None


def _dunder_rule(node: ast.AST, ctx: _Context) -> str | None:
    allowed = ctx.policy.allowed_dunders
    for ident in _identifiers(node):
        if _DUNDER.fullmatch(ident) and ident not in allowed:
            return f"{ident!r}: dunder names other than __init__ are not allowed"
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        for found in _DUNDER.findall(node.value):
            if found not in allowed:
                return f"string mentions {found!r}: dunder names are not allowed, even in strings"
    return None


# Order matters only for which rule a message names when several object.
NODE_RULES: tuple[tuple[str, Rule], ...] = (
    ("import", _import_rule),
    ("name", _name_rule),
    ("private", _private_rule),
    ("qualname", _qualname_rule),
    ("attribute", _attribute_rule),
    ("dunder", _dunder_rule),
    ("annotation", _annotation_rule),
)


def _net_rule(tree: ast.Module, policy: Policy) -> str | None:
    nets = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == policy.net_class]
    if len(nets) != 1:
        return (
            f"the code must define exactly one top-level 'class {policy.net_class}(nn.Module)'; "
            f"found {len(nets)}"
        )
    return None


# ---- helpers -----------------------------------------------------------------------


def _imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module]
    return []


def _import_paths(node: ast.AST) -> list[str]:
    """Dotted paths an import line reads (``from a import b`` reads ``a.b``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [f"{node.module}.{a.name}" for a in node.names]
    return []


def _is_private(name: str, allowed: frozenset[str]) -> bool:
    return name.startswith("_") and not _DUNDER.fullmatch(name) and name not in allowed


def _shown(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def _annotations(node: ast.AST) -> Iterator[ast.AST]:
    if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
        yield node.annotation
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
        yield node.returns


def _identifiers(node: ast.AST) -> Iterator[str]:
    """Every identifier a node binds or reads (not module paths in ``import`` lines)."""
    for slot in ("id", "attr", "arg", "asname"):
        value = getattr(node, slot, None)
        if isinstance(value, str):
            yield value
    if isinstance(node, ast.ImportFrom):
        yield from (a.name for a in node.names)
    elif not isinstance(node, ast.alias):
        name = getattr(node, "name", None)  # def, class, except ... as, match patterns
        if isinstance(name, str):
            yield name
    if isinstance(node, ast.Global | ast.Nonlocal):
        yield from node.names
    if isinstance(node, ast.MatchClass):
        yield from node.kwd_attrs
