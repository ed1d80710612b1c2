"""What a run report shows, as plain data: loading a run, the retrain hook, the
paper-style summary row, the Pareto front and the lineage.

Pure: no torch, no matplotlib.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lemo_nade import compliance, rules
from lemo_nade.config import RunConfig, config_from_json
from lemo_nade.history import IterationRecord
from lemo_nade.numbers import finite, missing
from lemo_nade.reporting.rows import iteration_rows, run_summary
from lemo_nade.score import co2_lbs
from lemo_nade.store import RunStore, StoreError

RETRAIN_NAME = "retrain.json"
NOT_MEASURED = "not measured (run `lemo-nade retrain`)"

# The keys read from RUN_DIR/retrain.json (written by a future `lemo-nade retrain`).
# Only ``test_accuracy`` is required; unknown keys are ignored.
RETRAIN_NUMBERS: dict[str, str] = {
    "test_accuracy": "test accuracy of the retrained model, a fraction 0..1",
    "hours": "retraining wall time in hours (added to the search's hours)",
    "kwh_pue": "retraining energy in kWh-PUE (Eq. 2; added to the search's)",
    "co2_lbs": "retraining CO2 in lbs (default: kwh_pue x the run's lbs/kWh)",
    "fps": "inference frames per second of the retrained model",
    "inference_kwh_pue_per_image": "inference energy per image, kWh-PUE",
    "inference_co2_lbs_per_image": "inference CO2 per image, lbs (default: from the energy)",
}
RETRAIN_INTS: dict[str, str] = {
    "iteration": "the candidate that was retrained (default: the best by CM)",
    "params": "parameter count of the retrained model",
    "epochs": "epochs the retraining ran",
    "best_epoch": "the epoch whose weights were kept and tested",
}
RETRAIN_STRINGS: dict[str, str] = {"energy_source": "estimate, rapl, nvml, ..."}


class ReportError(StoreError):
    """A run that cannot be reported as asked; the message names why (a bad-input error)."""


@dataclass(frozen=True)
class RunData:
    """Everything read from one run directory."""

    run_dir: Path
    run_id: str
    status: str
    reason: str
    config: RunConfig
    records: list[IterationRecord]
    retrain: dict[str, Any] | None

    @property
    def rows(self) -> list[dict[str, Any]]:
        return iteration_rows(self.records)

    @property
    def summary(self) -> dict[str, Any]:
        return run_summary(self.records, self.config)

    @property
    def ok_records(self) -> list[IterationRecord]:
        return [r for r in self.records if r.evaluation.metrics is not None]


def load_run(run_dir: Path) -> RunData:
    """Read a run; :class:`StoreError` when ``run_dir`` is not a run."""
    run_dir = Path(run_dir)
    with RunStore.open(run_dir) as store:
        return from_store(store, load_retrain(run_dir))


def from_store(store: RunStore, retrain: dict[str, Any] | None) -> RunData:
    """The run an open store holds (the dashboard's read-only one too), with ``retrain``."""
    status, reason = store.status()
    config = config_from_json(store.config_json())
    return RunData(store.run_dir, store.run_id, status, reason, config, store.iterations(), retrain)


def require_success(data: RunData) -> None:
    """A report needs at least one good candidate: :class:`ReportError` otherwise."""
    if data.ok_records:
        return
    if not data.records:
        raise ReportError(f"{data.run_dir} has no iterations yet; nothing to report")
    counts: dict[str, int] = {}
    for r in data.records:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    seen = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    raise ReportError(
        f"{data.run_dir} has no successful candidate ({seen}); nothing to report. "
        f"See `lemo-nade show {data.run_dir}` for the errors"
    )


# -- the retrain hook ----------------------------------------------------------------------


def load_retrain(run_dir: Path) -> dict[str, Any] | None:
    """``RUN_DIR/retrain.json`` checked against :data:`RETRAIN_NUMBERS`,
    :data:`RETRAIN_INTS` and :data:`RETRAIN_STRINGS`; None when there is none.
    A file that is there but unusable is a :class:`ReportError` (never half-read)."""
    path = Path(run_dir) / RETRAIN_NAME
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(doc, dict):
        raise ReportError(f'{path}: expected a JSON object like {{"test_accuracy": 0.91}}')
    out: dict[str, Any] = {}
    for key in (*RETRAIN_NUMBERS, *RETRAIN_INTS, *RETRAIN_STRINGS):
        value = doc.get(key)
        if value is None:
            continue
        if key in RETRAIN_STRINGS:
            ok = isinstance(value, str)
        elif key in RETRAIN_INTS:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = finite(value) is not None and value >= 0
        if not ok:
            kind = {**RETRAIN_NUMBERS, **RETRAIN_INTS, **RETRAIN_STRINGS}[key]
            raise ReportError(f"{path}: {key} = {value!r} is not valid ({kind})")
        out[key] = value
    if "test_accuracy" not in out:
        raise ReportError(f"{path}: test_accuracy is missing")
    if out["test_accuracy"] > 1:
        raise ReportError(
            f"{path}: test_accuracy must be a fraction 0..1, got {out['test_accuracy']}"
        )
    return out


# -- the paper-style row -------------------------------------------------------------------


def paper_row(data: RunData) -> dict[str, Any]:
    """The run as the paper's Tables 3/5/6 give it: test accuracy, parameters,
    generating + training hours, kWh-PUE, CO2 lbs, inference FPS, and inference
    kWh-PUE and CO2 per image. Before a retrain, test accuracy is None and time and
    energy are the search's alone (``includes_retrain`` False)."""
    s = data.summary
    rt = data.retrain or {}
    hours = s["search_hours"] + rt.get("hours", 0.0)
    kwh = s["search_kwh_pue"] + rt.get("kwh_pue", 0.0)
    lbs = s["search_co2_lbs"]
    if "co2_lbs" in rt:
        lbs += rt["co2_lbs"]
    elif "kwh_pue" in rt:
        lbs += co2_lbs(rt["kwh_pue"], data.config.co2_lbs_per_kwh)
    infer_kwh = rt.get("inference_kwh_pue_per_image", s["inference_kwh_pue_per_image"])
    infer_lbs = rt.get("inference_co2_lbs_per_image")
    if infer_lbs is None:
        infer_lbs = (
            co2_lbs(infer_kwh, data.config.co2_lbs_per_kwh)
            if "inference_kwh_pue_per_image" in rt
            else s["inference_co2_lbs_per_image"]
        )
    sources = [x for x in (s["energy_source"], rt.get("energy_source")) if x]
    # one model per row: the retrained candidate (which need not be the best by CM)
    model_idx = rt.get("iteration", s["best_iteration"]) if rt else s["best_iteration"]
    rec = next((r for r in data.records if r.idx == model_idx), None)
    m = rec.evaluation.metrics if rec is not None else None
    return {
        "test_accuracy": rt.get("test_accuracy"),
        "validation_accuracy": m.A2 if m is not None else s["best_validation_accuracy"],
        "params": rt.get("params", m.P if m is not None else s["best_params"]),
        "hours": hours,
        "kwh_pue": kwh,
        "co2_lbs": lbs,
        "fps": rt.get("fps", m.F if m is not None else s["best_fps"]),
        "inference_kwh_pue_per_image": infer_kwh,
        "inference_co2_lbs_per_image": infer_lbs,
        "energy_source": "+".join(dict.fromkeys(sources)) or None,
        "energy_estimated": s["energy_estimated"] or "estimate" in str(rt.get("energy_source", "")),
        "includes_retrain": bool(data.retrain),
        "best_iteration": s["best_iteration"],
        "retrained_iteration": rt.get("iteration", s["best_iteration"]) if rt else None,
        "model_iteration": model_idx,  # the candidate this row describes
    }


# -- Pareto front --------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: maximise the first value (accuracy),
    minimise the second (parameters). A point is dominated when another is at least as
    good in both and better in one; equal points are all kept. Points with a non-finite
    value are never on the front. Sorted by the second value, then the index."""
    good = [(i, a, p) for i, (a, p) in enumerate(points) if not (missing(a) or missing(p))]
    # Sweep by parameters ascending, accuracy descending: a point is on the front when its
    # accuracy beats every point with fewer parameters (or equals the best at equal size).
    good.sort(key=lambda t: (t[2], -t[1], t[0]))
    front: list[int] = []
    best_acc = -math.inf
    best_at: tuple[float, float] | None = None
    for i, a, p in good:
        if a > best_acc:
            front.append(i)
            best_acc, best_at = a, (a, p)
        elif best_at == (a, p):
            front.append(i)  # an exact duplicate of a front point
    return front


def pareto_iterations(records: Sequence[IterationRecord]) -> list[int]:
    """Iteration indices on the validation-accuracy vs parameters front."""
    ok = [r for r in records if r.evaluation.metrics is not None]
    pts = [
        (r.evaluation.metrics.A2, float(r.evaluation.metrics.P)) for r in ok if r.evaluation.metrics
    ]
    return [ok[i].idx for i in pareto_front(pts)]


# -- lineage -------------------------------------------------------------------------------


def instructions_text(rec: IterationRecord) -> str:
    """The instructions that produced a candidate, as codes; a promotion says so."""
    if rec.promoted:
        return f"(promotion: {rec.epochs} epochs)"
    if rec.prompt_instructions:
        return " ".join(code for code, _ in rec.prompt_instructions)
    return "(initial)" if rec.parent_idx is None else "(none: explore)"


def lineage_rows(records: Sequence[IterationRecord]) -> list[dict[str, Any]]:
    """One row per candidate: child <- parent, the instructions (with their priority
    sums and meanings), whether the child followed them, and how it ended."""
    return [
        {
            "child": r.idx,
            "parent": r.parent_idx,
            "instructions": [code for code, _ in r.prompt_instructions],
            "described": rules.describe(list(r.prompt_instructions)),
            "followed": compliance.followed_text(r.evaluation.compliance),
            "verdicts": list(r.evaluation.compliance),
            "status": r.status.value,
            "cm": r.cm,
        }
        for r in records
    ]


def lineage_tree(records: Sequence[IterationRecord], best_idx: int | None = None) -> str:
    """A text tree of which candidate came from which parent. Leaves (typically failed
    candidates) hang off their parent as twigs; a parent's single continuing child stays
    on the same column, so a long chain does not drift right."""
    by_idx = {r.idx: r for r in records}
    children: dict[int | None, list[IterationRecord]] = {}
    for r in records:
        parent = r.parent_idx if r.parent_idx in by_idx else None
        children.setdefault(parent, []).append(r)

    def label(r: IterationRecord) -> str:
        what = f"#{r.idx} {r.status.value}"
        if not missing(r.cm):
            what += f" CM {r.cm:.3f}"
        if r.idx == best_idx:
            what += " ★ best"
        via = instructions_text(r)
        if r.parent_idx is None:
            return f"{what}  {via}"
        return f"{what}  <- #{r.parent_idx} via {via}"

    lines: list[str] = []
    # An explicit stack (no recursion): (record, prefix of its line, prefix of its children).
    stack: list[tuple[IterationRecord, str, str]] = [
        (r, "", "") for r in reversed(children.get(None, []))
    ]
    while stack:
        rec, head, indent = stack.pop()
        lines.append(head + label(rec))
        kids = children.get(rec.idx, [])
        leaves = [k for k in kids if k.idx not in children]
        inner = [k for k in kids if k.idx in children]
        # The chain goes on in this column through the one child with descendants (or
        # the only child); the others hang off as twigs or branches.
        chain = inner if len(inner) == 1 else kids if len(kids) == 1 else []
        branches = [k for k in leaves + inner if k.idx not in {c.idx for c in chain}]
        todo: list[tuple[IterationRecord, str, str]] = []
        for n, kid in enumerate(branches):
            last = n == len(branches) - 1 and not chain
            todo.append(
                (kid, indent + ("└─ " if last else "├─ "), indent + ("   " if last else "│  "))
            )
        todo += [(kid, indent, indent) for kid in chain]
        stack.extend(reversed(todo))
    return "\n".join(lines)


def instruction_counts(records: Sequence[IterationRecord]) -> dict[str, int]:
    """How often each instruction was asked for, over all candidates, in rule-book order."""
    counts = dict.fromkeys(rules.INSTRUCTIONS, 0)
    for r in records:
        for code, _ in r.prompt_instructions:
            counts[code] = counts.get(code, 0) + 1
    return counts


# -- compare -------------------------------------------------------------------------------

COMPARE_COLUMNS: tuple[str, ...] = (
    "run_id",
    "run_dir",
    "dataset",
    "llm",
    "setting",
    "status",
    "iterations",
    "best_iteration",
    "model_iteration",
    "val_accuracy",
    "test_accuracy",
    "params",
    "hours",
    "kwh_pue",
    "co2_lbs",
    "fps",
    "energy_source",
    "llm_cost_usd",
    "llm_tokens",
    "instructions_followed",
    "instructions_not_followed",
    "instructions_unknown",
    "instruction_follow_rate",
)


def compare_row(data: RunData) -> dict[str, Any]:
    """One run as a row of ``lemo-nade compare`` (runs without a good candidate included)."""
    s = data.summary
    p = paper_row(data)
    return {
        "run_id": data.run_id,
        "run_dir": str(data.run_dir),
        "dataset": data.config.dataset,
        "llm": data.config.llm,
        "setting": data.config.setting,
        "status": data.status,
        "iterations": s["iterations"],
        "best_iteration": s["best_iteration"],
        "model_iteration": p["model_iteration"],  # retrained one, else the best
        "val_accuracy": p["validation_accuracy"],
        "test_accuracy": p["test_accuracy"],
        "params": p["params"],
        "hours": p["hours"],
        "kwh_pue": p["kwh_pue"],
        "co2_lbs": p["co2_lbs"],
        "fps": p["fps"],
        "energy_source": p["energy_source"],
        "llm_cost_usd": s["llm_cost_usd"],
        "llm_tokens": s["llm_tokens"],
        # instruction following: followed / (followed + not followed), unknowns apart
        "instructions_followed": s["instructions_followed"],
        "instructions_not_followed": s["instructions_not_followed"],
        "instructions_unknown": s["instructions_unknown"],
        "instruction_follow_rate": s["instruction_follow_rate"],
    }
