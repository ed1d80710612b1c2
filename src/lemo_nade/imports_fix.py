"""The imports a candidate uses but forgot, added before it is built.

A small model writes ``math.sqrt(...)`` or ``F.relu(...)`` and leaves out the import
(the local 0.5B model did, then lost its ``forward`` while repairing the NameError).
What such a name means is not in doubt, so :func:`add_missing` adds the one import
line for each of a few names that a model file uses and that no code in it binds,
and says so in a note. Only these names, all of modules the policy allows; anything
else undefined stays a build error that goes back to the model.

Pure: no torch, no network.
"""

from __future__ import annotations

import ast

KNOWN = {
    "torch": "import torch",
    "nn": "from torch import nn",
    "F": "import torch.nn.functional as F",
    "math": "import math",
}


def add_missing(code: str) -> tuple[str, list[str]]:
    """``code`` with an import for each name of :data:`KNOWN` it reads but never binds
    (anywhere: imports, assignments, arguments, definitions); notes on each added."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code, []
    read: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
    missing = [KNOWN[name] for name in KNOWN if name in read and name not in bound]
    if not missing:
        return code, []
    lines = code.splitlines(keepends=True)
    at = _after_preamble(tree)
    added = "".join(line + "\n" for line in missing)
    return "".join([*lines[:at], added, *lines[at:]]), [
        "added missing import" + ("s" if len(missing) > 1 else "") + ": "
        + ", ".join(f"`{line}`" for line in missing)
    ]  # fmt: skip


def _after_preamble(tree: ast.Module) -> int:
    """The line index after the module docstring and ``from __future__`` imports."""
    at = 0
    for index, node in enumerate(tree.body):
        docstring = (
            index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        )
        future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if not (docstring or future):
            break
        at = node.end_lineno or at
    return at
