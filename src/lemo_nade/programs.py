"""Which program a source is, whatever its comments, layout, docstrings, annotations and
the names it chooses: two candidates with the same :func:`program` build the same model
and, with the same seed, train to the same numbers. In the LLM bench runs of 2026-12-07,
9 of 325 trained candidates were such copies of an earlier candidate of their run (a
comment added, ``-> None`` dropped, a variable renamed), each with the earlier one's A1,
A2 and parameter count to the last digit; none had the same text.

Renamed, consistently and in order of first appearance: the attributes a class assigns
on ``self`` (``self.conv1`` -> ``self.a0``), unless a string in the source or a
``getattr``-like call could name one (``if "conv" in name`` in an init loop would then
behave differently); and, per function, the names it binds (parameters, lambda
parameters, assignment, loop and ``with`` targets). Kept: every other name (``torch``,
``nn``, builtins, class and function names), every literal, and the order of statements
(the order modules are created in decides their random initialisation).

Pure: no torch import.
"""

from __future__ import annotations

import ast
import functools

_BY_NAME = frozenset({"getattr", "setattr", "hasattr", "delattr", "vars", "__dict__"})


def same_program(a: str, b: str) -> bool:
    """Whether two sources are the same program (:func:`key`)."""
    return key(a) == key(b)


def key(code: str) -> str:
    """What identifies ``code``'s program: :func:`program`, or for a source that does not
    parse its words (layout aside)."""
    try:
        return program(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return " ".join(code.split())


@functools.lru_cache(maxsize=4096)
def program(code: str) -> str:
    """The canonical form of ``code`` (an AST dump); SyntaxError when it does not parse."""
    tree = ast.parse(code)
    return ast.dump(_Canonical(_attributes(tree)).visit(tree))


def _attributes(tree: ast.Module) -> dict[str, str]:
    """``self`` attributes the source assigns -> canonical names; none when it could
    reach an attribute by its name."""
    names: dict[str, str] = {}
    strings: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _on_self(node):
            if isinstance(node.ctx, ast.Store):
                names.setdefault(node.attr, f"a{len(names)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.append(node.value)
        elif isinstance(node, ast.Name | ast.Attribute) and _name_of(node) in _BY_NAME:
            return {}
    if any(text in name or name in text for name in names for text in strings if text):
        return {}  # a name test such as `"conv" in name` may depend on it
    return names


def _on_self(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id == "self"


def _name_of(node: ast.Name | ast.Attribute) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr


class _Canonical(ast.NodeTransformer):
    """Drops docstrings and annotations of functions; renames as the module says."""

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.scopes: list[dict[str, str]] = []

    def visit_Module(self, node: ast.Module) -> ast.AST:
        _drop_docstring(node)
        return self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        _drop_docstring(node)
        return self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        _drop_docstring(node)
        node.returns = None
        self.scopes.append(_bound(node))
        self.generic_visit(node)
        self.scopes.pop()
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.annotation = None
        if self.scopes:
            node.arg = self.scopes[-1].get(node.arg, node.arg)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if self.scopes:
            node.id = self.scopes[-1].get(node.id, node.id)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if _on_self(node):
            node.attr = self.attributes.get(node.attr, node.attr)
        return node


def _bound(function: ast.FunctionDef) -> dict[str, str]:
    """The names ``function`` binds (``self`` kept; nested functions' and lambdas' too)
    -> canonical names, in the order of a walk of its tree."""
    names: dict[str, str] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.arg):
            name = node.arg
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            name = node.id
        else:
            continue
        if name != "self":
            names.setdefault(name, f"v{len(names)}")
    return names


def _drop_docstring(node: ast.Module | ast.ClassDef | ast.FunctionDef) -> None:
    first = node.body[0] if node.body else None
    value = first.value if isinstance(first, ast.Expr) else None
    if isinstance(value, ast.Constant) and isinstance(value.value, str):  # a docstring
        node.body = node.body[1:] or [ast.Pass()]
