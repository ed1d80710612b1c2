"""Tables of a run as plain rows (for JSON, CSV, Markdown and the terminal).

Pure: no torch. Energy figures carry their source (``estimate``/``rapl``/``nvml``)
next to them, and the paper's Eq. 2-3 conversions say which PUE and carbon
intensity they used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lemo_nade import compliance
from lemo_nade.config import RunConfig
from lemo_nade.history import IterationRecord, best_of, elapsed_s, searched
from lemo_nade.numbers import jsonable
from lemo_nade.records import Metrics, Status
from lemo_nade.score import co2_lbs, energy_to_kwh_pue
from lemo_nade.usage import Usage, sum_usage

# (row key, Metrics field): the paper's metrics, then how they were measured. Energy
# sources are per part (cpu, ram, gpu).
_PAPER_COLUMNS = (
    ("A1", "A1"),
    ("A2", "A2"),
    ("P", "P"),
    ("F", "F"),
    ("E1_kwh", "E1"),
    ("E2_kwh", "E2"),
)
_MEASURE_COLUMNS = (
    ("energy_source", "energy_source"),
    ("energy_sources", "energy_sources"),
    ("E1_parts_kwh", "E1_parts"),
    ("E2_parts_kwh", "E2_parts"),
    ("energy_note", "energy_note"),
    ("P_trainable", "params_trainable"),
    ("model_mb", "model_mb"),
    ("flops_per_image", "flops_per_image"),
    ("fps_batch", "fps_batch"),
    ("fps_cv", "fps_cv"),
    ("latency_ms_p50", "latency_ms_p50"),
    ("latency_ms_p95", "latency_ms_p95"),
    ("threads", "threads"),
    ("measure_time_s", "measure_time_s"),
)


def _metric_cells(m: Metrics | None, columns: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {key: getattr(m, name) if m else None for key, name in columns}


def iteration_row(rec: IterationRecord, best_idx: int | None = None) -> dict[str, Any]:
    """One candidate as a row; every non-finite number in it is None (JSON has no NaN)."""
    m = rec.evaluation.metrics
    row = {
        "iteration": rec.idx,
        "parent": rec.parent_idx,
        # a promotion (the parent trained again after the search): its epochs; else None
        "promotion_epochs": rec.epochs,
        "status": rec.evaluation.status.value,
        "best": rec.idx == best_idx,
        **_metric_cells(m, _PAPER_COLUMNS),
        # all the child measured (a failed one: before it failed); None if nothing was
        "candidate_kwh": (
            rec.evaluation.spent_kwh if m or rec.evaluation.failure_kwh is not None else None
        ),
        **_metric_cells(m, _MEASURE_COLUMNS),
        "CM": rec.cm,
        "instructions_in": [code for code, _ in rec.prompt_instructions],
        # whether this candidate implements them: "4 of 6", and each verdict with its facts
        "instructions_followed": compliance.followed_text(rec.evaluation.compliance) or None,
        "compliance": [v._asdict() for v in rec.evaluation.compliance],
        "instructions_out": [code for code, _ in rec.resolved_instructions],
        "wall_time_s": round(rec.finished_at - rec.started_at, 3),
        "error": rec.evaluation.error.strip().splitlines()[-1] if rec.evaluation.error else None,
        "notes": rec.notes,
        "attempts": len(rec.attempts) or 1,
        "llm_tokens": rec.usage.total_tokens if rec.usage else 0,
        "llm_cost_usd": rec.usage.cost_usd if rec.usage else 0.0,
    }
    return jsonable(row)


def iteration_rows(records: list[IterationRecord]) -> list[dict[str, Any]]:
    best = best_of(records)
    return [iteration_row(r, best.idx if best else None) for r in records]


def llm_summary(records: list[IterationRecord]) -> dict[str, Any]:
    """LLM accounting for a run, and the invalid-candidate rate over all attempts (the
    paper's measure: about 15% of GPT-4 Turbo's and 25% of Gemini's answers failed).
    Promotions are no answers: they do not count."""
    records = searched(records)
    usage = sum_usage(r.usage for r in records) or Usage()  # no LLM: all zero
    # a run recorded before repairs existed has no attempts: its records count as one each
    statuses = [s for r in records for s in ([a.status for a in r.attempts] or [r.status])]
    invalid = sum(1 for s in statuses if s is not Status.OK)
    return {
        "attempts": len(statuses),
        "attempt_invalid_rate": invalid / len(statuses) if statuses else None,
        "llm_calls": usage.calls,
        "llm_tokens": usage.total_tokens,
        "llm_prompt_tokens": usage.prompt_tokens,
        "llm_completion_tokens": usage.completion_tokens,
        "llm_latency_s": usage.latency_s,
        "llm_cost_usd": usage.cost_usd,
    }


def compliance_summary(records: Sequence[IterationRecord]) -> dict[str, Any]:
    """Instruction following over a run (the paper's Fig. 2 question): every verdict of
    every checked candidate, the rate followed / (followed + not followed), unknowns
    apart, and the same per instruction code."""
    lists = [r.evaluation.compliance for r in records if r.evaluation.compliance]
    counts = compliance.tally(v for verdicts in lists for v in verdicts)
    return {
        "candidates_checked": len(lists),
        "instructions_checked": sum(counts.values()),
        "instructions_followed": counts[compliance.FOLLOWED],
        "instructions_not_followed": counts[compliance.NOT_FOLLOWED],
        "instructions_unknown": counts[compliance.UNKNOWN],
        "instruction_follow_rate": compliance.rate(counts),
        "instructions_by_code": {
            code: {**c, "rate": compliance.rate(c)}
            for code, c in compliance.by_instruction(lists).items()
        },
    }


def run_summary(records: list[IterationRecord], config: RunConfig) -> dict[str, Any]:
    """One row shaped like the paper's Tables 3/5/6, for the search phase.

    Search energy is the sum of what each candidate's child measured (training, the A1
    and A2 passes, FLOPs and speed; E1 + E2 for runs recorded before that was stored;
    for a failed candidate, what it spent training before it failed) in device kWh,
    times PUE (Eq. 2 applied to energies). It excludes the LLM's own energy, like the
    paper, each child's start-up and data loading, and candidates killed by a timeout.
    ``energy_estimated`` is true when any part of it is an estimate, not a sensor reading.
    ``iterations`` counts the search's candidates, ``promotions`` the trainings after it
    (their time and energy are the search's too).
    """
    own = searched(records)
    good = [r for r in own if r.evaluation.metrics is not None]
    energy_kwh = sum(r.evaluation.spent_kwh for r in records)
    measured = [r.evaluation.metrics for r in records if r.evaluation.metrics is not None]
    sources = sorted({m.energy_source for m in measured})
    best = best_of(records)
    bm = best.evaluation.metrics if best else None
    search_kwh_pue = energy_to_kwh_pue(energy_kwh, config.pue)
    infer_kwh_pue = None
    if bm is not None and bm.val_images > 0:
        infer_kwh_pue = energy_to_kwh_pue(bm.E2 / bm.val_images, config.pue)
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.evaluation.status.value] = statuses.get(r.evaluation.status.value, 0) + 1
    return {
        "iterations": len(own),
        "promotions": len(records) - len(own),
        "statuses": statuses,
        "invalid_rate": (len(own) - len(good)) / len(own) if own else None,
        "best_iteration": best.idx if best else None,
        "best_cm": jsonable(best.cm) if best else None,
        "best_validation_accuracy": jsonable(bm.A2) if bm else None,
        "best_params": bm.P if bm else None,
        "best_fps": jsonable(bm.F) if bm else None,
        "search_hours": elapsed_s(records) / 3600,
        "search_kwh_pue": search_kwh_pue,
        "search_co2_lbs": co2_lbs(search_kwh_pue, config.co2_lbs_per_kwh),
        "inference_kwh_pue_per_image": infer_kwh_pue,
        "inference_co2_lbs_per_image": (
            co2_lbs(infer_kwh_pue, config.co2_lbs_per_kwh) if infer_kwh_pue is not None else None
        ),
        "energy_source": ",".join(sources) if sources else None,
        "energy_estimated": any("estimate" in s or "unmeasured" in s for s in sources),
        "energy_note": bm.energy_note if bm else None,
        "search_energy_kwh": energy_kwh,  # device energy, before PUE
        "best_latency_ms_p50": jsonable(bm.latency_ms_p50) if bm else None,
        "best_latency_ms_p95": jsonable(bm.latency_ms_p95) if bm else None,
        "best_fps_cv": jsonable(bm.fps_cv) if bm else None,
        "best_flops_per_image": jsonable(bm.flops_per_image) if bm else None,
        **llm_summary(records),
        **compliance_summary(records),
        "pue": config.pue,
        "co2_lbs_per_kwh": config.co2_lbs_per_kwh,
    }
