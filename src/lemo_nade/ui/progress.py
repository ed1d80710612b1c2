"""What a run has spent and how far it has to go, for the dashboard: its LLM cost, an ETA,
its budgets as used / limit, the retrain result and the formats it was exported to.

The sums are the search's own (:func:`lemo_nade.history.totals` and
:func:`~lemo_nade.history.elapsed_s`, what ``search.Search.termination`` compares with
the budgets), the cost that of :func:`lemo_nade.reporting.rows.run_summary`, the retrain
result :func:`lemo_nade.reporting.data.load_retrain`'s, and the paper-style row
:func:`lemo_nade.reporting.data.paper_row`.

Pure: no torch import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lemo_nade.history import budget_usage, elapsed_s
from lemo_nade.reporting.data import RunData, paper_row
from lemo_nade.results.export import FORMATS, INFO
from lemo_nade.runs import BUDGETS

# Each budget's unit, and what the run has used of it (keys of ``used``).
UNITS = {"max_hours": "h", "max_energy_kwh": "kWh", "max_tokens": "tokens", "max_cost_usd": "USD"}
# The retrain result's keys shown on a run page.
RETRAIN_KEYS = ("iteration", "test_accuracy", "epochs", "best_epoch", "hours", "kwh_pue")
# The paper-style row's keys in a sweep's table (``paper_row``: test accuracy before a
# retrain is None, and hours and energy are then the search's alone).
PAPER_KEYS = (
    "test_accuracy",
    "validation_accuracy",
    "params",
    "hours",
    "kwh_pue",
    "co2_lbs",
    "fps",
    "inference_kwh_pue_per_image",
    "inference_co2_lbs_per_image",
    "includes_retrain",
)


def llm_cost_usd(summary: dict[str, Any]) -> float | None:
    """The run's LLM cost so far: None when no LLM was called or a call's price is unknown."""
    return summary["llm_cost_usd"] if summary["llm_calls"] else None


def eta_s(data: RunData) -> float | None:
    """An estimate of the seconds a running run has left: the mean time of its finished
    iterations times the iterations still to go (None unless it is running)."""
    done = len(data.records)
    if data.status != "running" or not done:
        return None
    left = max(0, data.config.iterations - done)
    return elapsed_s(data.records) / done * left


def budgets(data: RunData) -> list[dict[str, Any]]:
    """Each budget the run's config sets, in ``runs.BUDGETS`` order, as used / limit."""
    used = budget_usage(data.records)  # energy: device kWh, before PUE, as the budget
    out = []
    for name in BUDGETS:
        limit = getattr(data.config, name)
        if limit is not None:
            out.append(
                {
                    "budget": name,
                    "unit": UNITS[name],
                    "used": used[name],
                    "limit": limit,
                    "fraction": used[name] / limit,
                }
            )
    return out


def exports(run_dir: Path) -> list[str]:
    """The formats ``lemo-nade export`` finished (``export/FORMAT/export.json`` is there)."""
    return [fmt for fmt in FORMATS if (Path(run_dir) / "export" / fmt / INFO).is_file()]


def retrain_result(data: RunData) -> dict[str, Any] | None:
    """The retrain result and the export formats; None before ``lemo-nade retrain``."""
    if data.retrain is None:
        return None
    out = {key: data.retrain.get(key) for key in RETRAIN_KEYS}
    out["exports"] = exports(data.run_dir)
    return out


def paper(data: RunData) -> dict[str, Any]:
    """The run as a row of the paper's tables (:func:`paper_row`), for a sweep's table."""
    row = paper_row(data)
    return {key: row[key] for key in PAPER_KEYS}
