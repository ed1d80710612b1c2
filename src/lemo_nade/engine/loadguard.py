"""What keeps torch.export's loader from running anything an archive could carry.

The loader has three ways to execute data: ``torch.load`` and a raw ``pickle.loads``
(both unpickle) and ``sympy.sympify`` on every symbolic-shape string of the archive's
``model.json``, which is ``eval``: ``"Symbol('s77', positive=True, integer=True)"`` can
as well be ``"__import__('os').system(...)"``. While :func:`no_code` is active the
first is limited to tensors, the second refuses, and the third sees only strings made
of sympy's own names, symbol names, numbers and operators (:func:`check_sym_expr`).

Also here, as it patches the same loader: :func:`memoise_schema_hints`, a speed-up.
"""

from __future__ import annotations

import contextlib
import re
import typing
from collections.abc import Iterator
from typing import Any

import torch


class CodeRefused(Exception):
    """The archive carries something that would run as code when loaded."""


# What sympy's srepr and torch's shape printer write: sympy's classes and functions,
# torch's symbolic-shape functions (torch._export.serde.serialize's sympy_functions),
# and the assumptions given to Symbol.
SYMPY_NAMES = frozenset(
    (
        "Symbol", "Dummy", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min",
        "Abs", "floor", "ceiling", "Mod", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality",
        "Unequality", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "And",
        "Or", "Not", "true", "false", "True", "False", "oo", "zoo", "nan", "Infinity",
        "NegativeInfinity", "IntInfinity", "NegativeIntInfinity", "int_oo", "FloorDiv",
        "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
        "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
        "RoundDecimal", "ToFloat", "Identity", "positive", "negative", "integer", "real",
        "nonnegative", "nonpositive", "finite", "precision",
    )
)  # fmt: skip
_SYMBOL = re.compile(r"[a-z]+\d+")
_TOKEN = re.compile(
    r"\s+|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|[A-Za-z_]\w*|'[\w.+-]*'|\*\*|//|[-+*/%(),=<>!]=?"
)
MAX_EXPR_CHARS = 10_000


def check_sym_expr(text: str) -> None:
    """Raise CodeRefused unless ``text`` is a shape expression and nothing else."""
    if len(text) > MAX_EXPR_CHARS:
        raise CodeRefused(f"a shape expression of {len(text)} characters")
    at = 0
    while at < len(text):
        token = _TOKEN.match(text, at)
        if token is None:
            raise CodeRefused(f"a shape expression holds {text[at : at + 20]!r}")
        word = token.group()
        if (word[0].isalpha() or word[0] == "_") and not (
            word in SYMPY_NAMES or _SYMBOL.fullmatch(word)
        ):
            raise CodeRefused(f"a shape expression names {word[:40]!r}")
        at = token.end()


class _CheckedSympy:
    """The sympy module, but ``sympify`` checks a string before evaluating it."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def sympify(self, expr: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(expr, str):
            check_sym_expr(expr)
        return self._real.sympify(expr, *args, **kwargs)


@contextlib.contextmanager
def no_code() -> Iterator[None]:
    """While loading, every ``torch.load`` is restricted to tensors and plain containers,
    the two other unpickling paths of torch.export's loader refuse, and every shape
    expression must pass :func:`check_sym_expr` before sympy evaluates it."""
    original = torch.load

    def restricted(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    def refuse(*_: Any, **__: Any) -> Any:
        raise CodeRefused("the archive holds a pickled object")

    from torch._export.serde import serialize
    from torch.export.pt2_archive import _package

    saved = (_package.pickle, torch._C._pickle_load_obj, serialize.sympy)
    serialize.sympy = _CheckedSympy(serialize.sympy)
    torch.load = restricted
    _package.pickle = type("NoPickle", (), {"loads": staticmethod(refuse)})  # type: ignore[assignment]
    torch._C._pickle_load_obj = refuse
    try:
        yield
    finally:
        torch.load = original
        _package.pickle, torch._C._pickle_load_obj, serialize.sympy = saved


def memoise_schema_hints() -> None:
    """torch.export's loader calls ``typing.get_type_hints`` on its schema dataclasses
    once per deserialised object (hundreds per graph, about a third of loading a small
    model). The schema classes never change while the process lives, so the loader's
    module gets a ``typing`` whose ``get_type_hints`` remembers its answer per class
    and namespace; everything else is the real ``typing``. Set up where the fork server
    warms the loader, so every measuring child inherits the answers."""
    from torch._export.serde import serialize

    if isinstance(serialize.typing, _HintsMemo):
        return
    serialize.typing = _HintsMemo()  # type: ignore[assignment]


class _HintsMemo:
    def __init__(self) -> None:
        self._hints: dict[tuple[Any, ...], dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(typing, name)

    def get_type_hints(self, obj: Any, globalns: Any = None, localns: Any = None) -> Any:
        key = (obj, id(globalns), id(localns))
        if key not in self._hints:
            self._hints[key] = typing.get_type_hints(obj, globalns=globalns, localns=localns)
        return self._hints[key]
