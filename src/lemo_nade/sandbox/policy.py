"""Static policy for candidate model code: an AST check before any child process starts.

Pure: no torch import. This is a *first filter* that turns the common ways generated
code reaches outside a model (imports of ``os``/``subprocess``, ``eval``, dunder
walks such as ``().__class__.__base__``, ``torch.load``) into a fast, explainable
``FAILED_POLICY`` that the LLM can repair. It is not a security boundary on its own:
Python cannot be sandboxed by inspecting source, and a determined author can find a
way around any such list. Containment is the job of :mod:`lemo_nade.sandbox`.

Rules (each rejection reads ``rule: detail``): ``import`` (an allow-list of module
roots), ``name`` (builtins such as ``eval``/``open``/``getattr``, also as ``from``
imports), ``attribute`` (``x.os``, ``from torch import os``, ``case object(os=o)``,
frame walks like ``gi_frame.f_builtins``, ``from_file``), ``qualname`` (torch's
loaders, savers and extension doors, ``typing.get_type_hints``), ``private``
(``torch._C``, ``torch.fx.graph_module._exec_with_source``: underscore names of
imported modules; the candidate's own ``self._x`` is fine), ``dunder`` (in names and
in strings), ``annotation`` (string annotations are parsed and checked with the same
rules, since ``typing.get_type_hints`` evaluates them) and ``net`` (exactly one
top-level ``class Net``). The rules are data: extend a table in :data:`DEFAULT_POLICY`
(or pass your own :class:`Policy`) rather than adding branches.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lemo_nade.records import Status


@dataclass(frozen=True)
class Policy:
    """What candidate code may use. Module and qualified names are dotted paths."""

    allowed_import_roots: frozenset[str]  # a root allows its submodules (torch -> torch.nn)
    forbidden_names: frozenset[str]  # bare names (builtins) and names imported with ``from``
    forbidden_attributes: frozenset[str]  # ``x.NAME`` for any x: modules reachable through torch
    forbidden_qualnames: tuple[str, ...]  # after resolving import aliases; prefixes match
    allowed_dunders: frozenset[str]
    net_class: str = "Net"


DEFAULT_POLICY = Policy(
    allowed_import_roots=frozenset(
        {
            "torch",
            "math",
            "typing",
            "collections",
            "functools",
            "itertools",
            "dataclasses",
            "numbers",
            "enum",
            "abc",
            "__future__",
            "operator",
        }
    ),
    forbidden_names=frozenset(
        {
            "exec",
            "eval",
            "compile",
            "open",
            "__import__",
            "globals",
            "locals",
            "vars",
            "getattr",
            "setattr",
            "delattr",
            "breakpoint",
            "input",
            "help",
            # operator's string-driven getters are getattr by another name
            "attrgetter",
            "methodcaller",
        }
    ),
    # Allowed modules re-export dangerous ones (``torch.os``, ``typing.sys``); no model
    # needs these names as attributes. ``_C`` is torch's raw C++ binding.
    forbidden_attributes=frozenset(
        {
            "os",
            "sys",
            "subprocess",
            "shutil",
            "socket",
            "builtins",
            "importlib",
            "ctypes",
            "pickle",
            "marshal",
            "io",
            "pathlib",
            "platform",
            "inspect",
            "signal",
            "threading",
            "multiprocessing",
            "tempfile",
            "glob",
            "urllib",
            "http",
            "_C",
            "attrgetter",
            "methodcaller",
            # frames and code reached from generators, coroutines and tracebacks: a frame's
            # f_globals/f_builtins lead back to the builtins (and __import__)
            "gi_frame",
            "gi_code",
            "cr_frame",
            "cr_code",
            "ag_frame",
            "ag_code",
            "tb_frame",
            "tb_next",
            "f_globals",
            "f_locals",
            "f_builtins",
            "f_back",
            "f_code",
            # torch.UntypedStorage.from_file and friends read any file
            "from_file",
        }
    ),
    forbidden_qualnames=(
        "torch.load",
        "torch.hub",
        "torch.jit.load",
        "torch.ops",
        "torch.utils.cpp_extension",
        "torch.package",
        # beyond the brief's list: other file/network/extension doors in torch
        "torch.save",
        "torch.from_file",
        "torch.serialization",
        "torch.library",
        "torch.classes",
        "torch.distributed",
        "torch.multiprocessing",
        "torch.utils.model_zoo",
        "torch.utils.collect_env",  # runs shell commands
        "torch.utils.show_pickle",
        "torch.utils.model_dump",
        "torch.utils.benchmark",  # compiles C++
        "torch.export.load",
        "torch.export.save",
        # evaluate strings as code: get_type_hints eval()s string annotations
        "typing.get_type_hints",
        "typing.ForwardRef",
    ),
    allowed_dunders=frozenset({"__init__", "__name__", "__future__"}),
)

_DUNDER = re.compile(r"__\w+__")


@dataclass
class _Context:
    policy: Policy
    aliases: dict[str, str]  # local name -> qualified module/object path


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
    ctx = _Context(policy, _aliases(tree))
    for node in ast.walk(tree):
        for rule_name, rule in NODE_RULES:
            detail = rule(node, ctx)
            if detail is not None:
                line = getattr(node, "lineno", None)
                where = f"line {line}: " if line else ""
                return Status.FAILED_POLICY, f"{rule_name}: {where}{detail}"
    detail = _net_rule(tree, policy)
    if detail is not None:
        return Status.FAILED_POLICY, f"net: {detail}"
    return None


# ---- node rules: each sees every node and returns a detail when it objects -----------


def _import_rule(node: ast.AST, ctx: _Context) -> str | None:
    allowed = ", ".join(sorted(ctx.policy.allowed_import_roots))
    for module in _imported_modules(node):
        if module.split(".")[0] not in ctx.policy.allowed_import_roots:
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
        names = [a.name for a in node.names]
    elif isinstance(node, ast.MatchClass):  # ``case object(os=o)`` reads the attribute os
        names = list(node.kwd_attrs)
    for name in names:
        if name in ctx.policy.forbidden_attributes:
            return f"attribute {name!r} is not allowed in model code"
    return None


def _private_rule(node: ast.AST, ctx: _Context) -> str | None:
    for qualname in _qualnames(node, ctx.aliases):
        parts = qualname.split(".")
        for part in parts[1:]:
            if part.startswith("_") and part not in ctx.policy.allowed_dunders:
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
        for inner in ast.walk(tree):
            for rule_name, rule in NODE_RULES:
                detail = rule(inner, ctx)
                if detail is not None:
                    return (
                        f"in the string annotation {annotation.value[:40]!r}: {rule_name}: {detail}"
                    )
    return None


def _qualname_rule(node: ast.AST, ctx: _Context) -> str | None:
    for qualname in _qualnames(node, ctx.aliases):
        for banned in ctx.policy.forbidden_qualnames:
            if qualname == banned or qualname.startswith(banned + "."):
                return (
                    f"{banned} is not allowed in model code (no loading, saving, "
                    "extensions or evaluating strings as code)"
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


NODE_RULES: tuple[tuple[str, Rule], ...] = (
    ("import", _import_rule),
    ("name", _name_rule),
    ("attribute", _attribute_rule),
    ("qualname", _qualname_rule),
    ("private", _private_rule),
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


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local names bound by imports anywhere in the module, to their qualified paths."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    root = a.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _qualnames(node: ast.AST, aliases: dict[str, str]) -> Iterator[str]:
    """Qualified names a node refers to: an import's targets, or an alias-rooted chain."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        yield from (f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Attribute | ast.Name):
        parts: list[str] = []
        current: ast.AST = node
        while isinstance(current, ast.Attribute):
            parts.append(current.attr)
            current = current.value
        if isinstance(current, ast.Name) and current.id in aliases:
            yield ".".join([aliases[current.id], *reversed(parts)])


def _annotations(node: ast.AST) -> Iterator[ast.AST]:
    if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
        yield node.annotation
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
        yield node.returns


def _identifiers(node: ast.AST) -> Iterator[str]:
    """Every identifier a node binds or reads (not module paths in ``import`` lines)."""
    for field in ("id", "attr", "arg", "asname"):
        value = getattr(node, field, None)
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
