"""The expert system: the paper's rule book (Table 2), Algorithm 2 (NNGES) and
Algorithm 3 (RESOLVE_CONFLICT), kept as data so they can be read, printed and tested.

Pure: no torch. Values are the sums of user priorities (PA1 … PF) of the rules
that fired, exactly as Algorithm 2 adds them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

# Table 2, in the rule book's order. Algorithm 3's sort is stable, so this order
# breaks ties between instructions with equal values.
INSTRUCTIONS: tuple[str, ...] = (
    "ACL", "ASC", "ADL", "RCL", "RSC", "RDL", "AD", "AMK",
    "AWI", "AR", "RK", "RD", "AMN", "RN", "RR",
)  # fmt: skip

DESCRIPTIONS: dict[str, str] = {
    "ACL": "Add convolutional layer",
    "ASC": "Add skip connection",
    "ADL": "Add dense layer",
    "RCL": "Reduce convolutional layer",
    "RSC": "Reduce skip connection",
    "RDL": "Reduce dense layer",
    "AD": "Add dropout layer",
    "AMK": "Add more kernel",
    "AWI": "Add weight initializer",
    "AR": "Add regularization",
    "RK": "Reduce number of kernel",
    "RD": "Reduce dropout layer",
    "AMN": "Add more neurons",
    "RN": "Reduce neurons",
    "RR": "Reduce regularization",
}

# Table 2's "conflicting instructions" column (AWI has none). Symmetric.
CONFLICTS: dict[str, str] = {
    "ACL": "RCL", "RCL": "ACL",
    "ASC": "RSC", "RSC": "ASC",
    "ADL": "RDL", "RDL": "ADL",
    "AD": "RD", "RD": "AD",
    "AMK": "RK", "RK": "AMK",
    "AR": "RR", "RR": "AR",
    "AMN": "RN", "RN": "AMN",
}  # fmt: skip

METRIC_KEYS: tuple[str, ...] = ("A1", "A2", "E1", "E2", "F")
PRIORITY_KEYS: tuple[str, ...] = ("PA1", "PA2", "PE1", "PE2", "PF")
THRESHOLD_KEYS: tuple[str, ...] = ("TA1", "TA2", "TE1", "TE2", "TF", "OT", "UT")

Values = Mapping[str, float]


@dataclass(frozen=True)
class Rule:
    """One ``if`` of Algorithm 2: when ``condition`` holds, add ``priority`` to each instruction."""

    line: int  # the ``if`` line in the paper's Algorithm 2
    text: str  # the condition as the paper writes it
    condition: Callable[[Values, Values], bool]  # (metrics, thresholds) -> fired
    instructions: tuple[str, ...]  # in the paper's order of the additions
    priority: str  # which user priority is added


def _gap(a: float, b: float) -> float:
    """``a - b`` rounded to 12 decimals: accuracies are decimals, and a gap that is equal
    to its threshold on paper (0.90 - 0.85 = 0.05) must not exceed it in floating point
    (0.05000000000000004), or the strict ``>`` of the paper would fire."""
    return round(a - b, 12)


# Algorithm 2, lines 3-48, in order. Note lines 33 and 40: the overfitting rule adds
# PA1 and the underfitting rule adds PA2, as the paper writes them.
RULES: tuple[Rule, ...] = (
    Rule(3, "A1 < TA1", lambda m, t: m["A1"] < t["TA1"], ("ACL", "ADL", "AMK", "ASC"), "PA1"),
    Rule(9, "A2 < TA2", lambda m, t: m["A2"] < t["TA2"], ("ACL", "ADL", "AMK", "ASC"), "PA2"),
    Rule(15, "E1 > TE1", lambda m, t: m["E1"] > t["TE1"], ("AD", "AWI", "RCL", "RK", "RSC"), "PE1"),
    Rule(22, "E2 > TE2", lambda m, t: m["E2"] > t["TE2"], ("AD", "RCL", "RK", "RDL"), "PE2"),
    Rule(28, "F < TF", lambda m, t: m["F"] < t["TF"], ("AD", "RK", "RSC"), "PF"),
    Rule(
        33,
        "(A1 - A2) > OT",
        lambda m, t: _gap(m["A1"], m["A2"]) > t["OT"],
        ("ADL", "RCL", "RK", "RN", "AR"),
        "PA1",
    ),
    Rule(
        40,
        "(A2 - A1) > UT",
        lambda m, t: _gap(m["A2"], m["A1"]) > t["UT"],
        ("RD", "ACL", "AMK", "ADL", "AMN", "ASC", "RR"),
        "PA2",
    ),
)


class RulesInputError(ValueError):
    """Missing or non-finite metric/priority/threshold; the message names the key."""


def _require(values: Values, keys: tuple[str, ...], what: str) -> None:
    for key in keys:
        if key not in values:
            raise RulesInputError(f"{what}: missing {key!r}; required: {', '.join(keys)}")
        value = values[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            raise RulesInputError(f"{what}: {key} must be a number, got {value!r}")


def fired_rules(metrics: Values, thresholds: Values) -> list[Rule]:
    """The rules of Algorithm 2 whose condition holds for these metrics."""
    _require(metrics, METRIC_KEYS, "metrics")
    _require(thresholds, THRESHOLD_KEYS, "thresholds")
    return [rule for rule in RULES if rule.condition(metrics, thresholds)]


def nnges(metrics: Values, priorities: Values, thresholds: Values) -> dict[str, float]:
    """Algorithm 2: the value of each of the 15 instructions (rule-book order)."""
    _require(priorities, PRIORITY_KEYS, "priorities")
    cmd = dict.fromkeys(INSTRUCTIONS, 0.0)
    for rule in fired_rules(metrics, thresholds):
        for code in rule.instructions:
            cmd[code] += float(priorities[rule.priority])
    # Priorities are decimals (0.3, 0.4, ...); rounding the float sums keeps sums that are
    # equal on paper equal here, so Algorithm 3's ties fall back to rule-book order.
    return {code: round(value, 12) for code, value in cmd.items()}


def resolve_conflict(cmd: Mapping[str, float]) -> list[tuple[str, float]]:
    """Algorithm 3: sort descending (stable, so ties keep rule-book order), keep values
    > 0, and zero every later instruction that conflicts with a kept one."""
    order = sorted(INSTRUCTIONS, key=lambda code: -cmd.get(code, 0.0))
    values = {code: float(cmd.get(code, 0.0)) for code in order}
    refined: list[tuple[str, float]] = []
    for m, code in enumerate(order):
        if values[code] > 0:
            refined.append((code, values[code]))
            for later in order[m + 1 :]:
                if CONFLICTS.get(code) == later:
                    values[later] = 0.0
    return refined


def instructions_for(
    metrics: Values, priorities: Values, thresholds: Values, pursue: bool = False
) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Algorithm 1, lines 14-15: NNGES then RESOLVE_CONFLICT. Returns (raw, resolved).
    With ``pursue``, against :func:`pursued` thresholds (a departure; off in the paper's)."""
    if pursue:
        thresholds = pursued(metrics, priorities, thresholds)
    raw = nnges(metrics, priorities, thresholds)
    return raw, resolve_conflict(raw)


# The rules that fire when a metric is above its threshold (energy) or below it (FPS):
# (metric, threshold, priority, "above" or "below", unit).
_LIMITS = (
    ("E1", "TE1", "PE1", "above", "kWh"),
    ("E2", "TE2", "PE2", "above", "kWh"),
    ("F", "TF", "PF", "below", "images/s"),
)
FAR = 10.0  # how far from the measured value a threshold is "out of reach"
# pursue: a met threshold moves to 0.9 x the measured energy, or the FPS / 0.9. Only
# whether the rule fires depends on it (CM keeps the user's thresholds), so any step
# below 1 asks the same; 0.9 keeps the moved threshold a plausible next target to show.
PURSUE_STEP = 0.9


def _measured(
    metrics: Values, priorities: Values, thresholds: Values
) -> Iterator[tuple[str, str, str, str, str, float, float]]:
    """The :data:`_LIMITS` whose priority is > 0, with a threshold given and a finite,
    positive measurement: each entry with its (value, limit)."""
    for metric, key, priority, fires, unit in _LIMITS:
        value, limit = metrics.get(metric), thresholds.get(key)
        if not (priorities.get(priority) or 0) > 0 or value is None or limit is None:
            continue
        if math.isfinite(value) and value > 0:
            yield metric, key, priority, fires, unit, value, limit


def pursued(metrics: Values, priorities: Values, thresholds: Values) -> dict[str, float]:
    """``thresholds`` with each prioritised energy or FPS threshold that ``metrics``
    already meet moved just past the measured value (``PURSUE_STEP``), so that its rule
    fires: ``E1 > TE1`` becomes ``E1 > 0.9 E1``, ``F < TF`` becomes ``F < F / 0.9``.
    Algorithm 2 stops asking for less energy or more speed once a threshold is met, while
    CM (Eq. 1) rewards every further gain; with this the accuracy thresholds stay the
    constraints the user set, and the costs the user prioritised are pursued as far as
    the accuracy rules let them. Thresholds of unprioritised costs, of accuracy, and of
    non-finite or non-positive measurements are returned unchanged."""
    moved = dict(thresholds)
    for _metric, key, _priority, fires, _unit, value, limit in _measured(
        metrics, priorities, thresholds
    ):
        if fires == "above" and value <= limit:
            moved[key] = value * PURSUE_STEP
        elif fires == "below" and value >= limit:
            moved[key] = value / PURSUE_STEP
    return moved


def out_of_reach(
    metrics: Values, priorities: Values, thresholds: Values, far: float = FAR
) -> list[str]:
    """A warning for each prioritised energy or FPS threshold more than ``far`` times
    away from the measured value, on the side where its rule cannot fire: its priority
    then steers nothing (the paper's CIFAR-10 TE1 = 1e-3 kWh is 70 times what a
    candidate uses on a CPU at the bench's fidelity, so setting 2 searched as setting 1
    did). Empty when every prioritised rule can fire."""
    warnings = []
    for metric, key, priority, fires, unit, value, limit in _measured(
        metrics, priorities, thresholds
    ):
        if not (math.isfinite(limit) and limit > 0):
            continue
        ratio = limit / value if fires == "above" else value / limit
        if ratio <= far:
            continue
        op = ">" if fires == "above" else "<"
        digits = ".3g" if unit == "kWh" else ",.0f"
        shown = f"{{:{digits}}} {unit}".format
        suggested = f"{value:.2g}" if unit == "kWh" else f"{value:.0f}"
        warnings.append(
            f"{key} = {shown(limit)} is {ratio:.0f}x {fires} the measured {metric} = "
            f"{shown(value)}: the rule '{metric} {op} {key}' cannot fire, so {priority} = "
            f"{priorities[priority]:g} steers nothing; set it near the models' values, "
            f"e.g. --set thresholds.{key}={suggested}"
        )
    return warnings


def describe(resolved: list[tuple[str, float]] | tuple[tuple[str, float], ...]) -> list[str]:
    """The resolved instructions in words, highest priority first (for prompts and reports)."""
    return [f"{DESCRIPTIONS[code]} ({code}, priority {value:g})" for code, value in resolved]
