"""What each JSON endpoint of the dashboard answers, as plain data.

The numbers are those of ``lemo-nade show`` and ``lemo-nade report``: rows and summaries
from :mod:`lemo_nade.reporting.rows`, the Pareto front and lineage from
:mod:`lemo_nade.reporting.data`. Every string that reaches the browser goes through
:func:`clean` (:func:`lemo_nade.text.plain`: no terminal sequences, control characters
shown as escapes); the page then puts it in the DOM as text, never as markup.

Pure: no torch import.
"""

from __future__ import annotations

import difflib
from typing import Any

from lemo_nade.history import IterationRecord
from lemo_nade.numbers import jsonable
from lemo_nade.reporting.data import RunData, lineage_rows, pareto_iterations
from lemo_nade.store import DB_NAME
from lemo_nade.sweeps.plan import read_plan, read_status, shows_failed
from lemo_nade.text import plain
from lemo_nade.ui import progress
from lemo_nade.ui.catalog import Catalog, Entry
from lemo_nade.ui.readonly import Loaded

# The per-iteration table's columns (keys of reporting.rows.iteration_row).
ROW_KEYS = (
    "iteration",
    "parent",
    "status",
    "best",
    "A1",
    "A2",
    "P",
    "flops_per_image",
    "F",
    "E1_kwh",
    "E2_kwh",
    "energy_source",
    "CM",
    "instructions_in",
    "instructions_followed",
    "error",
)


def clean(value: Any) -> Any:
    """``value`` ready for JSON: strings through :func:`plain`, non-finite numbers None."""
    if isinstance(value, str):
        return plain(value)
    if isinstance(value, dict):
        return {plain(str(k)): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return jsonable(value)


def run_header(entry: Entry, loaded: Loaded) -> dict[str, Any]:
    """A run as one row of the runs list: what it is, how far it got, its best so far."""
    head: dict[str, Any] = {"key": entry.key, "dir": str(entry.path), "sweep": entry.sweep}
    if loaded.data is None:
        pending = not (entry.path / DB_NAME).is_file()
        head.update(status="pending" if pending else "unreadable", error=loaded.error)
        return clean(head)
    data = loaded.data
    s = data.summary
    head.update(
        run_id=data.run_id,
        status=data.status,
        reason=data.reason,
        dataset=data.config.dataset,
        architect=data.config.llm,
        setting=data.config.setting,
        iterations_done=s["iterations"],
        iterations_planned=data.config.iterations,
        best_iteration=s["best_iteration"],
        best_cm=s["best_cm"],
        best_accuracy=s["best_validation_accuracy"],
        energy_kwh_pue=s["search_kwh_pue"],
        energy_source=s["energy_source"],
        energy_estimated=s["energy_estimated"],
        llm_cost_usd=progress.llm_cost_usd(s),
        eta_s=progress.eta_s(data),  # an estimate: mean iteration time x iterations left
        version=loaded.version,
    )
    return clean(head)


def runs_list(catalog: Catalog) -> dict[str, Any]:
    """Every run and sweep under the directories given (scanned again on each call)."""
    catalog.scan()
    runs = []
    for key, entry in catalog.runs.items():
        source = catalog.source(key)
        if source is not None:
            runs.append(run_header(entry, source.load()))
    sweeps = [
        {"key": e.key, "dir": str(e.path), "name": e.path.name} for e in catalog.sweeps.values()
    ]
    return clean({"dirs": [str(d) for d in catalog.dirs], "runs": runs, "sweeps": sweeps})


def run_page(entry: Entry, loaded: Loaded) -> dict[str, Any]:
    """The run page's data: header, iteration rows, Pareto front and lineage."""
    page: dict[str, Any] = {"version": loaded.version, "run": run_header(entry, loaded)}
    data = loaded.data
    if data is None:
        return clean({**page, "rows": [], "pareto": [], "lineage": [], "budgets": []})
    rows = [{k: row.get(k) for k in ROW_KEYS} for row in data.rows]
    lineage = [
        {k: r[k] for k in ("child", "parent", "instructions", "followed", "status", "cm")}
        for r in lineage_rows(data.records)
    ]
    llm = data.summary
    page.update(
        rows=rows,
        pareto=pareto_iterations(data.records),
        lineage=lineage,
        llm={k: llm[k] for k in ("llm_calls", "llm_tokens", "llm_cost_usd")},
        follow_rate=llm["instruction_follow_rate"],
        budgets=progress.budgets(data),
        retrain=progress.retrain_result(data),
    )
    return clean(page)


def iteration_detail(data: RunData, idx: int) -> dict[str, Any] | None:
    """One candidate in full: its code and the diff against its parent's, its error and
    log tail, its attempts, and the LLM's prompt and answer where they were stored."""
    by_idx = {r.idx: r for r in data.records}
    rec = by_idx.get(idx)
    if rec is None:
        return None
    parent = by_idx.get(rec.parent_idx) if rec.parent_idx is not None else None
    return clean(
        {
            "iteration": rec.idx,
            "parent": rec.parent_idx,
            "status": rec.status.value,
            "architect": rec.architect,
            "code": rec.code,
            "diff": _diff(parent, rec),
            "error": rec.evaluation.error,
            "log_tail": rec.evaluation.log_tail,
            "notes": rec.notes,
            "instructions_in": [[c, p] for c, p in rec.prompt_instructions],
            "instructions_out": [[c, p] for c, p in rec.resolved_instructions],
            "compliance": [v._asdict() for v in rec.evaluation.compliance],
            "attempts": [
                {"attempt": a.attempt, "status": a.status.value, "error": a.error}
                for a in rec.attempts
            ],
            "calls": [_call(c.attempt, c.request, c.response, c.error) for c in rec.calls],
        }
    )


def _diff(parent: IterationRecord | None, rec: IterationRecord) -> str | None:
    if parent is None:
        return None
    lines = difflib.unified_diff(
        parent.code.splitlines(keepends=True),
        rec.code.splitlines(keepends=True),
        fromfile=f"#{parent.idx}",
        tofile=f"#{rec.idx}",
    )
    return "".join(lines)


def _call(attempt: int, request: Any, response: Any, error: str | None) -> dict[str, Any]:
    """An LLM exchange: the prompt's messages and the answer's text."""
    messages = request.get("messages") or []
    prompt = [
        {"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
        for m in messages
        if isinstance(m, dict)
    ]
    return {"attempt": attempt, "prompt": prompt, "answer": response.get("text"), "error": error}


def sweep_page(catalog: Catalog, entry: Entry) -> dict[str, Any]:
    """A sweep's table: one row per planned run with the runs list's columns and the
    paper-style row (:func:`lemo_nade.reporting.data.paper_row`; None before a run
    has started)."""
    plan = read_plan(entry.path)
    status = read_status(entry.path)
    axes = [str(a) for a in plan.get("axes", {})]
    rows = []
    for run in plan.get("runs", []):
        key = f"{entry.key}/{run['name']}"
        source = catalog.source(key)
        loaded = source.load() if source else None
        head: dict[str, Any] = (
            run_header(catalog.runs[key], loaded) if loaded else {"status": "pending"}
        )
        last = status.get(run["name"]) or {}
        if shows_failed(last, head.get("status")):
            head.update(status="failed", error=last.get("reason"))
        paper = progress.paper(loaded.data) if loaded and loaded.data else None
        rows.append({"run": run["name"], "key": key, **run.get("axes", {}), **head, "paper": paper})
    return clean({"key": entry.key, "dir": str(entry.path), "axes": axes, "rows": rows})
