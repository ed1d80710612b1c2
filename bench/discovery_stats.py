"""What ``bench/discovery.py`` reports, computed from the runs' stored records.

Per run (:func:`run_figures`): the first model's and the best validation accuracy, the
gain, the last candidate's accuracy, the best CM, duplicate trainings (the same code
trained twice), seconds and kWh spent, the Pareto hypervolumes of accuracy against
log10 parameters and against log10 training kWh (E1), and the anytime curve (best-so-far
A2 against seconds). Per arm
(:func:`summary`): mean, standard deviation and a 95% t-interval over seeds. Between
arms (:func:`paired`): differences per seed, the exact two-sided Wilcoxon signed-rank and
sign-test p-values (enumerated: no SciPy needed for a handful of seeds).

Pure: no torch, no network.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import statistics
from collections.abc import Sequence
from typing import Any

from lemo_nade.history import IterationRecord, searched
from lemo_nade.programs import key
from lemo_nade.records import Status

# two-sided 95% Student t critical values by degrees of freedom (1..30); above: 1.96
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip
MAX_EXACT = 20  # seeds; 2^20 sign patterns


def run_figures(records: Sequence[IterationRecord]) -> dict[str, Any]:
    """One run's figures (None where nothing trained)."""
    ok = [r for r in records if r.status is Status.OK and r.evaluation.metrics is not None]
    a2 = [r.evaluation.metrics.A2 for r in ok]  # type: ignore[union-attr]
    start = records[0].started_at if records else 0.0
    curve, best = [], -1.0
    for r in records:
        if r.status is Status.OK and r.evaluation.metrics is not None:
            best = max(best, r.evaluation.metrics.A2)
        if best >= 0:
            curve.append((r.finished_at - start, best))
    own = searched(ok)
    # the same program (comments and names aside) trained twice; a promotion trains a
    # candidate again on purpose, at more epochs: no duplicate
    codes = [key(r.code) for r in own]
    cms = [r.cm for r in ok if r.cm is not None]
    return {
        "candidates": len(records),
        "trained": len(ok),
        "first_A2": a2[0] if a2 else None,
        "best_A2": max(a2) if a2 else None,
        "gain": (max(a2) - a2[0]) if a2 else None,
        "last_A2": a2[-1] if a2 else None,
        "drop_from_best": (max(a2) - a2[-1]) if a2 else None,
        # the search's own last candidate (before any promotion), and how many promotions
        "last_search_A2": own[-1].evaluation.metrics.A2 if own else None,  # type: ignore[union-attr]
        "promoted": len(ok) - len(own),
        "best_CM": max(cms) if cms else None,
        "duplicates": len(codes) - len(set(codes)),
        "seconds": (records[-1].finished_at - start) if records else 0.0,
        "kwh": sum(r.evaluation.spent_kwh for r in records),
        "best_params": _params_of_best(ok),
        "hypervolume": hypervolume(
            [(r.evaluation.metrics.A2, r.evaluation.metrics.P) for r in ok]  # type: ignore[union-attr]
        ),
        "hypervolume_energy": hypervolume(
            [(r.evaluation.metrics.A2, r.evaluation.metrics.E1) for r in ok],  # type: ignore[union-attr]
            MAX_KWH,
        ),
        "anytime": curve,
        **efficiency(ok),
    }


WITHIN = 0.02  # accuracy a faster or leaner model may lose against the first (issue 18)


def efficiency(ok: Sequence[IterationRecord]) -> dict[str, float | None]:
    """What settings 2 (energy) and 5 (FPS) search for, against the run's first model:
    the best-CM candidate's accuracy change (``cm_dA2``), and among the candidates within
    ``WITHIN`` of the first model's accuracy the lowest training and inference energy and
    the highest FPS (``E1_near``, ``E2_near``, ``F_near``), with the first model's own
    (``first_E1`` ...). :func:`set_ratios` turns them into multiples of the first model's."""
    if not ok:
        return dict.fromkeys(("cm_dA2", "first_model", *NEAR, *(f"first_{k}" for k in COSTS)))
    ms = [r.evaluation.metrics for r in ok]
    first = ms[0]
    assert first is not None
    best_cm = max(ok, key=lambda r: r.cm if r.cm is not None else -math.inf).evaluation.metrics
    near = [m for m in ms if m is not None and m.A2 >= first.A2 - WITHIN - 1e-9]
    return {
        "cm_dA2": best_cm.A2 - first.A2 if best_cm is not None else None,
        "E1_near": min(m.E1 for m in near),
        "E2_near": min(m.E2 for m in near),
        "F_near": max(m.F for m in near),
        # which first model: only arms that trained the same one share its figures
        "first_model": hashlib.sha256(key(ok[0].code).encode()).hexdigest()[:12],
        **{f"first_{k}": getattr(first, k) for k in COSTS},
    }


COSTS = ("E1", "E2", "F")
NEAR = tuple(f"{k}_near" for k in COSTS)


def set_ratios(per_arm: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """One seed's runs, one per arm, each with :func:`efficiency`'s figures: sets each
    run's ``E1_x``, ``E2_x``, ``F_x`` (its ``*_near`` over the first model's figure)
    against the median of that figure over the arms that trained the same first model
    (``first_model``: the offline and random architects start from the same one; a
    ``reference:`` or LLM arm from its own). Those arms measure one model in their own
    runs; on this machine its FPS came out 3,601 in one arm and 7,498 in another, so a
    ratio to each arm's own measurement would compare the arms' luck with their first
    model. Returns the spread of those measurements, max / min over the largest group of
    such arms (``first_F_spread`` ...): the measurement noise that any difference between
    them must exceed; None with no two arms sharing a first model."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for run in per_arm:
        groups.setdefault(run.get("first_model"), []).append(run)
    largest = max(groups.values(), key=len, default=[])
    spread: dict[str, float | None] = dict.fromkeys(f"first_{k}_spread" for k in COSTS)
    for k in COSTS:
        for group in groups.values():
            firsts = [v for run in group if (v := run.get(f"first_{k}")) and v > 0]
            denom = statistics.median(firsts) if firsts else None
            for run in group:
                near = run.get(f"{k}_near")
                run[f"{k}_x"] = near / denom if denom and near is not None else None
            if group is largest:
                spread[f"first_{k}_spread"] = max(firsts) / min(firsts) if len(firsts) > 1 else None
    return spread


def _params_of_best(ok: Sequence[IterationRecord]) -> int | None:
    best = max(ok, key=lambda r: r.evaluation.metrics.A2, default=None)  # type: ignore[union-attr]
    return best.evaluation.metrics.P if best is not None else None  # type: ignore[union-attr]


MAX_PARAMS = 1e7  # the hypervolumes' reference points: accuracy 0 at this many parameters
MAX_KWH = 1e-2  # or at this much training energy (E1, kWh) per candidate


def hypervolume(points: Sequence[tuple[float, float]], worst: float = MAX_PARAMS) -> float:
    """The area dominated by (accuracy up, log10 cost down) points, up to the reference
    (accuracy 0, cost ``worst``), in accuracy x decades. The cost is parameters or kWh."""
    top = math.log10(worst)
    front = sorted(((a, math.log10(max(c, worst * 1e-12))) for a, c in points if c < worst),
                   key=lambda x: x[1])  # fmt: skip
    area, best = 0.0, 0.0
    for i, (acc, size) in enumerate(front):
        best = max(best, acc)
        right = front[i + 1][1] if i + 1 < len(front) else top
        area += best * (right - size)
    return area


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, standard deviation and 95% t-interval of the values given (None left out)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = statistics.stdev(xs)
    t = _T95[len(xs) - 2] if len(xs) - 1 <= len(_T95) else 1.96
    half = t * std / math.sqrt(len(xs))
    return {"n": len(xs), "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def paired(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, Any]:
    """``a`` against ``b``, seed by seed (pairs with a None left out): mean difference,
    wins/losses/ties, and the exact two-sided Wilcoxon signed-rank and sign-test p."""
    diffs = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    return {
        "n": len(diffs),
        "mean_diff": statistics.fmean(diffs) if diffs else None,
        "wins": sum(d > 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs),
        "ties": sum(d == 0 for d in diffs),
        "wilcoxon_p": wilcoxon_p(diffs),
        "sign_p": sign_p(diffs),
    }


def wilcoxon_p(diffs: Sequence[float]) -> float | None:
    """Exact two-sided p of the Wilcoxon signed-rank test (zeros dropped, ties given mean
    ranks), by enumerating every sign pattern; None with no non-zero difference or over
    :data:`MAX_EXACT` of them."""
    nonzero = [d for d in diffs if d != 0]
    if not nonzero or len(nonzero) > MAX_EXACT:
        return None
    ranks = _ranks([abs(d) for d in nonzero])
    observed = sum(r for r, d in zip(ranks, nonzero, strict=True) if d > 0)
    centre = sum(ranks) / 2
    extreme = abs(observed - centre)
    hits = sum(
        abs(sum(r for r, s in zip(ranks, signs, strict=True) if s) - centre) >= extreme - 1e-12
        for signs in itertools.product((False, True), repeat=len(ranks))
    )
    return hits / 2 ** len(ranks)


def sign_p(diffs: Sequence[float]) -> float | None:
    """Exact two-sided sign-test p (zeros dropped)."""
    wins, n = sum(d > 0 for d in diffs), sum(d != 0 for d in diffs)
    if n == 0:
        return None
    k = min(wins, n - wins)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
