"""A candidate's code tidied to what a model file holds, before the policy sees it.

At top level a model file needs only imports, function and class definitions, its
docstring and constants (a name bound to a literal, a container of literals or
arithmetic on them, such as ``WEIGHT_DECAY = 1e-4`` or ``CHANNELS = [16, 32]``). Models
add more: ``if __name__ == "__main__":`` test blocks, ``model = Net()``, ``print(...)``,
training loops, ``torch.manual_seed(0)``. :func:`tidy` removes that top-level code, and
the imports the remaining code never uses (a hallucinated ``from operator import
divmod`` fails at load time however unused it is).

What it never does:

- touch anything inside a function or class, so nothing the policy would refuse there
  is laundered;
- remove an assignment the remaining code reads (``DEVICE = torch.device("cpu")`` used
  in ``forward`` stays; the policy and the sandbox judge it), nor ``WEIGHT_DECAY``,
  which the trainer reads;
- remove ``from __future__`` imports, or ``import torch`` (a whole allowed module, no
  ``as``): it cannot fail, and a model editing this code may rely on it.

An unused import of a module the policy refuses (``from torchvision import models``,
left over from a data-loading block the tidying removed) goes like any other unused
import: removing it never widens what the remaining code can reach (an import only
runs the imported module's code), and the policy still checks all of that code, so
``os`` used anywhere in it is still refused. A 0.5B model kept such imports through
three repair prompts in a row.

The code is cut by source positions, not regenerated, so comments and formatting
survive; only an import line that loses some of its names is rewritten. Code that does
not parse is returned unchanged: its syntax error goes back to the model.

Pure: no torch, no network.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass

from lemo_nade.sandbox.policy_rules import DEFAULT_POLICY

_DUNDER = re.compile(r"^__\w+__$")
_BLANK_LINE = re.compile(rb"[ \t]*\r?\n")
READ_BY_TRAINER = frozenset({"WEIGHT_DECAY"})  # module constants the framework reads
_Import = ast.Import | ast.ImportFrom


@dataclass(frozen=True)
class Cut:
    start: int  # byte offsets into the UTF-8 source (ast's columns are bytes)
    end: int
    text: bytes = b""
    lines: bool = False  # whole lines: blank lines around it may merge


def parses(code: str) -> ast.Module | None:
    """The module's tree, or None when it does not parse."""
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def tidy(code: str) -> tuple[str, list[str]]:
    """``code`` without top-level non-definitions and unused imports; notes on each.

    The notes read like ``removed top-level code: `model = Net()` (line 49)``; none when
    nothing was removed (then the code is returned unchanged).
    """
    tree = parses(code)
    if tree is None:
        return code, []
    removed = _top_level_code(tree)
    kept = [n for n in tree.body if n not in removed]
    unused = _unused_imports(kept)
    if not removed and not unused:
        return code, []
    src = Source(code)
    cuts = [src.cut(node) for node in removed]
    notes = [f"{_describe(node, src)} ({_lines(node)})" for node in removed]
    dropped: list[str] = []
    for node, aliases in unused:
        rest = [a for a in node.names if a not in aliases]
        gone = copy.copy(node)
        gone.names = aliases
        dropped.append(f"`{ast.unparse(gone)}` ({_lines(node)})")
        if rest:
            node_rest = copy.copy(node)
            node_rest.names = rest
            cuts.append(src.replace(node, ast.unparse(node_rest)))
        else:
            cuts.append(src.cut(node))
    out = []
    if notes:
        out.append("removed top-level code: " + ", ".join(notes))
    if dropped:
        out.append(f"removed unused import{'s' if len(dropped) > 1 else ''}: " + ", ".join(dropped))
    return src.apply(cuts), out


# ---- what stays at top level ------------------------------------------------------------


def _top_level_code(tree: ast.Module) -> list[ast.stmt]:
    """Top-level statements that are not definitions and that nothing kept reads."""
    body = tree.body
    constants: set[str] = set()
    kept: set[int] = set()
    for i, node in enumerate(body):
        if _is_definition(node, i, constants):
            kept.add(i)
    while True:  # an assignment the kept code reads stays, and so on
        read = _loaded_names(body[i] for i in kept)
        more = {i for i, n in enumerate(body) if i not in kept and _assigned(n) & read}
        if not more:
            break
        kept |= more
    return [n for i, n in enumerate(body) if i not in kept]


def _is_definition(node: ast.stmt, index: int, constants: set[str]) -> bool:
    if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef):
        return True
    if isinstance(node, ast.ClassDef):
        return True
    if isinstance(node, ast.Expr) and index == 0:  # the module docstring
        return isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    names = _assigned(node)
    if not names or any(_DUNDER.match(n) for n in names):
        return False
    if names & READ_BY_TRAINER:
        return True
    value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
    if value is None or not _is_constant(value, constants):
        return False
    constants |= names
    return True


def _assigned(node: ast.stmt) -> set[str]:
    """Names a plain top-level assignment binds (empty for anything else)."""
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign | ast.AugAssign):
        targets = [node.target]
    else:
        return set()
    names: set[str] = set()
    for target in targets:
        elts = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
        if not all(isinstance(e, ast.Name) for e in elts):
            return set()
        names |= {e.id for e in elts if isinstance(e, ast.Name)}
    return names


def _is_constant(node: ast.expr, constants: set[str]) -> bool:
    """A literal, a container of literals, or arithmetic on them and earlier constants."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id in constants
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(_is_constant(e, constants) for e in node.elts)
    if isinstance(node, ast.Dict):
        parts = [*node.keys, *node.values]
        return all(p is not None and _is_constant(p, constants) for p in parts)
    if isinstance(node, ast.UnaryOp):
        return _is_constant(node.operand, constants)
    if isinstance(node, ast.Subscript):
        return _is_constant(node.value, constants) and _is_constant(node.slice, constants)
    if isinstance(node, ast.BinOp):
        return _is_constant(node.left, constants) and _is_constant(node.right, constants)
    return False


def _loaded_names(nodes: Iterable[ast.stmt]) -> set[str]:
    return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}


# ---- unused imports -----------------------------------------------------------------------


def _unused_imports(kept: list[ast.stmt]) -> list[tuple[_Import, list[ast.alias]]]:
    """Each import with the names it binds that no kept code uses (and may go)."""
    used = _used_names([n for n in kept if not isinstance(n, ast.Import | ast.ImportFrom)])
    found: list[tuple[_Import, list[ast.alias]]] = []
    for node in kept:
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue  # changes how the file compiles; never "unused"
        unused = [a for a in node.names if _bound(a, node) not in used and _allowed(node, a)]
        if unused:
            found.append((node, unused))
    return found


def _bound(alias: ast.alias, node: _Import) -> str:
    """The name an import binds: ``import a.b`` binds ``a``; ``as`` names win."""
    if alias.asname:
        return alias.asname
    return alias.name.split(".")[0] if isinstance(node, ast.Import) else alias.name


def _used_names(nodes: list[ast.stmt]) -> set[str]:
    """Every name the code reads, including those in string annotations."""
    used = set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Name):
                used.add(n.id)
            elif isinstance(n, ast.Global | ast.Nonlocal):
                used.update(n.names)
            for annotation in _annotations(n):
                if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
                    used.update(re.findall(r"[A-Za-z_]\w*", annotation.value))
    return used


def _annotations(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.arg | ast.AnnAssign):
        found = [node.annotation]
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        found = [node.returns]
    else:
        return []
    return [a for a in found if a is not None]


def _allowed(node: _Import, alias: ast.alias) -> bool:
    """Whether an unused import may go: not a star or relative import, and not a bare
    ``import torch`` of an allowed module, which cannot fail and which a model editing
    this code next may rely on."""
    if alias.name == "*" or (isinstance(node, ast.ImportFrom) and node.level):
        return False
    module = alias.name if isinstance(node, ast.Import) else node.module or ""
    allowed = module.split(".")[0] in DEFAULT_POLICY.allowed_import_roots
    return not (
        allowed and isinstance(node, ast.Import) and not alias.asname and "." not in alias.name
    )


# ---- cutting by source position ------------------------------------------------------------


class Source:
    """The code as UTF-8 bytes, cut at statements' positions."""

    def __init__(self, code: str) -> None:
        self.data = code.encode()
        self.lines = self.data.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def _span(self, node: ast.stmt | ast.expr) -> tuple[int, int]:
        end_line = node.end_lineno or node.lineno
        end_col = node.end_col_offset if node.end_col_offset is not None else 0
        start = self.starts[node.lineno - 1] + node.col_offset
        return start, self.starts[end_line - 1] + end_col

    def segment(self, node: ast.stmt) -> str:
        start, end = self._span(node)
        return self.data[start:end].decode()

    def replace(self, node: ast.stmt | ast.expr, text: str) -> Cut:
        return Cut(*self._span(node), text.encode())

    def cut(self, node: ast.stmt) -> Cut:
        """The statement's lines, with the comment lines just above it; or, when it
        shares a line with another statement (``a; b``), just it and its ``;``."""
        start, end = self._span(node)
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        before = self.data[self.starts[first] : start]
        after = self.data[end : self.starts[last + 1]]
        if before.strip() or not re.fullmatch(rb"[ \t]*(#[^\n]*)?\r?\n?", after):
            tail = re.match(rb"[ \t]*;[ \t]*", after)
            if tail:
                return Cut(start, end + tail.end())
            head = re.search(rb";[ \t]*$", before)
            return Cut(start - (len(before) - head.start()) if head else start, end)
        while first > 0 and self.lines[first - 1].startswith(b"#"):
            first -= 1  # a comment introducing the removed code goes with it
        return Cut(self.starts[first], self.starts[last + 1], lines=True)

    def apply(self, cuts: list[Cut]) -> str:
        out, at = [], 0
        for cut in sorted(cuts, key=lambda c: c.start):
            start = max(cut.start, at)
            out += [self.data[at:start], cut.text]
            at = max(at, cut.end)
            while cut.lines and (blank := _BLANK_LINE.match(self.data, at)):
                if not re.search(rb"(\A|\n[ \t]*\r?\n)\Z", b"".join(out)):
                    break  # the line before the cut is code: keep the blank line after it
                at = blank.end()  # no run of blank lines where the code was
        out.append(self.data[at:])
        return b"".join(out).decode().strip("\n").rstrip() + "\n"


def _describe(node: ast.stmt, src: Source) -> str:
    if isinstance(node, ast.If) and "__name__" in {
        n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)
    }:
        return "`if __name__ == '__main__':` block"
    first = src.segment(node).splitlines()[0].strip()
    short = first if len(first) <= 50 else first[:47] + "..."
    return f"`{short}{' ...' if (node.end_lineno or node.lineno) > node.lineno else ''}`"


def _lines(node: ast.stmt) -> str:
    end = node.end_lineno or node.lineno
    return f"line {node.lineno}" if end == node.lineno else f"lines {node.lineno}-{end}"
