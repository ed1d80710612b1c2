"""Instruction following: does a child implement the instructions that produced it?

The paper's Fig. 2 question (GPT-4 Turbo did not follow its instructions about 15% of
the time), answered for every candidate: the parent and the child are compared fact by
fact, and each resolved instruction of the request (Table 2) gets a :class:`Verdict`,
``followed``, ``not_followed`` or ``unknown`` (a fact is missing), with the facts
compared as its reason (``conv layers 2 -> 3``).

The facts come from two places, neither of them the candidate's process:

- the measured graph (``Metrics.structure``, computed by the measuring child from the
  exported program: :mod:`lemo_nade.engine.structure`): conv layers and their channels,
  skip connections, dense layers and their units, dropout where the IR keeps it;
- the candidate's source, parsed here with :mod:`ast` and never run (:func:`source_facts`):
  dropout layers and their rates, weight initialisers (``nn.init.*``), ``WEIGHT_DECAY``.

The rule per instruction (:data:`RULES`):

- ACL / RCL: more / fewer conv layers; ASC / RSC: more / fewer skip connections;
  ADL / RDL: more / fewer dense layers.
- AMK / RK: wider / narrower conv layers; AMN / RN: wider / narrower hidden dense layers
  (all but the classifier). Widths are compared layer by layer: followed when some
  order-preserving matching of the parent's layers to the child's (the layers one of
  them has in addition left out) widens (narrows) at least one layer and narrows (widens)
  none, so adding or removing a layer in the same step neither counts nor hides it.
  Where one side has no such layers, their total is compared.
- AD / RD: more / fewer dropout layers, or, matched as widths are, higher / lower rates.
  The graph's dropout where it shows any, else the source's.
- AWI: the child calls an initialiser the parent does not.
- AR / RR: ``WEIGHT_DECAY`` up / down; where it did not change, dropout up / down.

Pure: no torch.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lemo_nade.records import Evaluation, Metrics, ProposalRequest, Verdict

FOLLOWED, NOT_FOLLOWED, UNKNOWN = "followed", "not_followed", "unknown"
VERDICTS = (FOLLOWED, NOT_FOLLOWED, UNKNOWN)

DROPOUT_MODULES = frozenset(
    {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"}
)
DROPOUT_FUNCTIONS = frozenset(
    {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}
)
DEFAULT_DROPOUT = 0.5  # torch's default p
MATCH_CAP = 1024  # longer layer lists are compared by their totals


@dataclass(frozen=True)
class Facts:
    """One model's facts: ``graph`` from the measured graph (None: not measured, e.g. a
    run recorded before it existed), ``source`` from its code (None: does not parse)."""

    graph: Mapping[str, Any] | None
    source: Mapping[str, Any] | None


def facts_of(code: str | None, metrics: Metrics | None) -> Facts:
    graph = metrics.structure if metrics is not None and metrics.structure else None
    return Facts(graph, source_facts(code) if code is not None else None)


def check(request: ProposalRequest, code: str, evaluation: Evaluation) -> tuple[Verdict, ...]:
    """The verdicts for a child that was measured (OK) and came from a parent with
    instructions; none otherwise."""
    if not evaluation.status.ok or evaluation.metrics is None or request.parent_code is None:
        return ()
    parent = facts_of(request.parent_code, request.parent_metrics)
    return judge(request.instructions, parent, facts_of(code, evaluation.metrics))


def attach(request: ProposalRequest, code: str, evaluation: Evaluation) -> Evaluation:
    """``evaluation`` with its verdicts (:func:`check`)."""
    return replace(evaluation, compliance=check(request, code, evaluation))


def judge(
    instructions: Iterable[tuple[str, float]], parent: Facts, child: Facts
) -> tuple[Verdict, ...]:
    """One verdict per instruction, in the request's order."""
    out = []
    for code, _value in instructions:
        rule = RULES.get(code)
        verdict, reason = rule(parent, child) if rule else (UNKNOWN, "no rule for this code")
        out.append(Verdict(code, verdict, reason))
    return tuple(out)


# -- summaries -----------------------------------------------------------------------------


def tally(verdicts: Iterable[Verdict]) -> dict[str, int]:
    """How many verdicts of each kind."""
    counts = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    return counts


def rate(counts: Mapping[str, int]) -> float | None:
    """followed / (followed + not_followed); None when nothing could be decided."""
    decided = counts.get(FOLLOWED, 0) + counts.get(NOT_FOLLOWED, 0)
    return counts.get(FOLLOWED, 0) / decided if decided else None


def followed_text(verdicts: Sequence[Verdict]) -> str:
    """``4 of 6`` (``, 1 unknown`` where some could not be decided); '' for none."""
    if not verdicts:
        return ""
    counts = tally(verdicts)
    unknown = f", {counts[UNKNOWN]} unknown" if counts[UNKNOWN] else ""
    return f"{counts[FOLLOWED]} of {len(verdicts)}{unknown}"


def by_instruction(lists: Iterable[Sequence[Verdict]]) -> dict[str, dict[str, int]]:
    """Per instruction code (first seen first), how many of each verdict."""
    out: dict[str, dict[str, int]] = {}
    for verdicts in lists:
        for v in verdicts:
            counts = out.setdefault(v.code, dict.fromkeys(VERDICTS, 0))
            counts[v.verdict] = counts.get(v.verdict, 0) + 1
    return out


# -- facts from the source -----------------------------------------------------------------


def source_facts(code: str) -> dict[str, Any] | None:
    """What the source says without running it: ``dropout_rates`` (one per dropout
    constructor or functional call, in source order; None where ``p`` is not a number
    the source spells out), ``initialisers`` (the ``torch.nn.init`` functions called)
    and ``weight_decay`` (the module constant ``WEIGHT_DECAY``; 0 when absent, None when
    not a number). None when the code does not parse."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    aliases, constants = _module_names(tree)
    rates: list[float | None] = []
    inits: set[str] = set()
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    for node in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):  # in source order
        name = _resolved(node.func, aliases)
        last = name.rsplit(".", 1)[-1]
        if name.startswith("torch.nn.init."):
            inits.add(last)
        elif name.startswith("torch.nn.") and last in DROPOUT_MODULES:
            rates.append(_p(node, 0, constants))
        elif last in DROPOUT_FUNCTIONS and name in (f"torch.nn.functional.{last}", f"torch.{last}"):
            rates.append(_p(node, 1, constants))
    has_wd = "WEIGHT_DECAY" in constants or "WEIGHT_DECAY" in aliases
    return {
        "dropout_rates": rates,
        "initialisers": sorted(inits),
        "weight_decay": constants.get("WEIGHT_DECAY") if has_wd else 0.0,
    }


def _module_names(tree: ast.Module) -> tuple[dict[str, str], dict[str, float | None]]:
    """Import aliases (``nn`` -> ``torch.nn``) and module-level number constants (None
    where the value is not a plain arithmetic of numbers), anywhere at the top level."""
    aliases: dict[str, str] = {}
    constants: dict[str, float | None] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):  # import torch.nn as nn; import torch.nn (binds torch)
            for a in node.names:
                top = a.name.split(".")[0]
                aliases[a.asname or top] = a.name if a.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else []
        if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets = [stmt.target]
        value = getattr(stmt, "value", None)
        for target in targets:
            if isinstance(target, ast.Name) and value is not None:
                constants[target.id] = _number(value, {})
    return aliases, constants


def _resolved(func: ast.expr, aliases: Mapping[str, str]) -> str:
    """A call's dotted name with its first part resolved through the imports."""
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return ""
    parts.append(aliases.get(func.id, func.id))
    return ".".join(reversed(parts))


def _p(call: ast.Call, position: int, constants: Mapping[str, float | None]) -> float | None:
    """The dropout rate a call passes (``p=`` or its positional place), or torch's default."""
    given = next((k.value for k in call.keywords if k.arg == "p"), None)
    if given is None and len(call.args) > position:
        given = call.args[position]
    if given is None:
        return DEFAULT_DROPOUT
    value = _number(given, constants)
    return value if value is not None and 0 <= value <= 1 else None


_ARITHMETIC: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _number(node: ast.expr, constants: Mapping[str, float | None]) -> float | None:
    """A number written as a literal, a known constant, or +-*/ of them; else None."""
    try:
        number = node.value if isinstance(node, ast.Constant) else None
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            value: float | None = float(number)
        elif isinstance(node, ast.Name):
            value = constants.get(node.id)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = _number(node.operand, constants)
            value = None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
        elif isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            a, b = _number(node.left, constants), _number(node.right, constants)
            value = None if a is None or b is None else _ARITHMETIC[type(node.op)](a, b)
        else:
            value = None
    except (ArithmeticError, RecursionError):
        return None
    return value if value is not None and math.isfinite(value) else None


# -- the rules -----------------------------------------------------------------------------

Rule = Callable[[Facts, Facts], tuple[str, str]]


def _missing(parent: Facts, child: Facts, side: str) -> str:
    which = [n for n, f in (("parent", parent), ("child", child)) if getattr(f, side) is None]
    return f"no {side} facts for the {' and '.join(which)}"


def _count(key: str, label: str, up: bool) -> Rule:
    def rule(parent: Facts, child: Facts) -> tuple[str, str]:
        if parent.graph is None or child.graph is None:
            return UNKNOWN, _missing(parent, child, "graph")
        a, b = parent.graph.get(key), child.graph.get(key)
        if a is None or b is None:
            return UNKNOWN, f"{label} not counted"
        return _decided(b > a if up else b < a), f"{label} {a} -> {b}"

    return rule


def _widths(key: str, label: str, up: bool, hidden: bool = False) -> Rule:
    def rule(parent: Facts, child: Facts) -> tuple[str, str]:
        if parent.graph is None or child.graph is None:
            return UNKNOWN, _missing(parent, child, "graph")
        a, b = list(parent.graph.get(key, [])), list(child.graph.get(key, []))
        if hidden:  # the last dense layer is the classifier
            a, b = a[:-1], b[:-1]
        if a and b and max(len(a), len(b)) <= MATCH_CAP:
            moved = _moved(a, b, up) == 1
        else:
            moved = sum(b) > sum(a) if up else sum(b) < sum(a)
        return _decided(moved), f"{label} {_seq(a)} -> {_seq(b)}"

    return rule


def _dropout(parent: Facts, child: Facts, up: bool) -> tuple[bool | None, str]:
    """Whether dropout went up (down): a layer more (fewer), or a higher (lower) rate,
    matched as widths are; from the graph where it shows any dropout, else the source."""
    pg, cg = parent.graph, child.graph
    if pg is not None and cg is not None and (pg.get("dropout_layers") or cg.get("dropout_layers")):
        a, b = list(pg.get("dropout_rates", [])), list(cg.get("dropout_rates", []))
    elif parent.source is not None and child.source is not None:
        a, b = list(parent.source["dropout_rates"]), list(child.source["dropout_rates"])
    else:
        return None, _missing(parent, child, "source")
    reason = f"dropout {_seq(a)} -> {_seq(b)}"
    if len(a) != len(b) and (len(b) > len(a)) == up:
        return True, reason
    rates_a, rates_b = [x for x in a if x is not None], [x for x in b if x is not None]
    if len(rates_a) < len(a) or len(rates_b) < len(b):
        return (False if len(a) != len(b) else None), reason + " (a rate not a number)"
    return bool(a and b and _moved(rates_a, rates_b, up) == 1), reason


def _dropout_rule(up: bool) -> Rule:
    def rule(parent: Facts, child: Facts) -> tuple[str, str]:
        moved, reason = _dropout(parent, child, up)
        return (UNKNOWN if moved is None else _decided(moved)), reason

    return rule


def _regularisation(up: bool) -> Rule:
    def rule(parent: Facts, child: Facts) -> tuple[str, str]:
        if parent.source is None or child.source is None:
            return UNKNOWN, _missing(parent, child, "source")
        a, b = parent.source["weight_decay"], child.source["weight_decay"]
        decay = f"weight decay {_num(a)} -> {_num(b)}"
        if a is not None and b is not None and a != b:
            return _decided((b > a) == up), decay
        moved, reason = _dropout(parent, child, up)
        if moved or (moved is False and a is not None and b is not None):
            return _decided(bool(moved)), f"{decay}; {reason}"
        return UNKNOWN, f"{decay}; {reason}"

    return rule


def _initialiser(parent: Facts, child: Facts) -> tuple[str, str]:
    if parent.source is None or child.source is None:
        return UNKNOWN, _missing(parent, child, "source")
    new = sorted(set(child.source["initialisers"]) - set(parent.source["initialisers"]))
    if new:
        return FOLLOWED, f"initialisers added: {', '.join(new)}"
    return NOT_FOLLOWED, f"no new initialiser ({', '.join(child.source['initialisers']) or 'none'})"


def _decided(ok: bool) -> str:
    return FOLLOWED if ok else NOT_FOLLOWED


def _moved(a: Sequence[float], b: Sequence[float], up: bool) -> int:
    """Over the order-preserving matchings of the shorter list into the longer one:
    1 when one moves some matched pair (parent ``a[i]`` -> child ``b[j]``) the ``up``
    way and none the other way; 0 when the best only keeps them equal; -1 when every
    matching moves one the other way."""
    parent_short = len(a) <= len(b)
    short, long_ = (a, b) if parent_short else (b, a)

    def sign(x: float, y: float) -> int:  # +1: the wanted way, -1: the other
        p, c = (x, y) if parent_short else (y, x)
        return 0 if c == p else (1 if (c > p) == up else -1)

    row = [0] * (len(long_) + 1)  # matching nothing more: possible, nothing moved
    for i in range(len(short) - 1, -1, -1):
        cur = [-1] * (len(long_) + 1)
        for j in range(len(long_) - 1, -1, -1):
            best = cur[j + 1]  # long_[j] left out
            s = sign(short[i], long_[j])
            if s >= 0 and row[j + 1] >= 0:
                best = max(best, 1 if s > 0 else row[j + 1])
            cur[j] = best
        row = cur
    return row[0]


def _seq(values: Sequence[float | None], shown: int = 8) -> str:
    if not values:
        return "none"
    text = ",".join(_num(v) for v in values[:shown])
    return text + (f",… ({len(values)})" if len(values) > shown else "")


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


RULES: dict[str, Rule] = {
    "ACL": _count("conv_layers", "conv layers", up=True),
    "RCL": _count("conv_layers", "conv layers", up=False),
    "ASC": _count("skip_connections", "skip connections", up=True),
    "RSC": _count("skip_connections", "skip connections", up=False),
    "ADL": _count("dense_layers", "dense layers", up=True),
    "RDL": _count("dense_layers", "dense layers", up=False),
    "AMK": _widths("conv_channels", "conv channels", up=True),
    "RK": _widths("conv_channels", "conv channels", up=False),
    "AMN": _widths("dense_units", "hidden units", up=True, hidden=True),
    "RN": _widths("dense_units", "hidden units", up=False, hidden=True),
    "AD": _dropout_rule(up=True),
    "RD": _dropout_rule(up=False),
    "AWI": _initialiser,
    "AR": _regularisation(up=True),
    "RR": _regularisation(up=False),
}
