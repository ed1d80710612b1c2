"""``lemo-nade compare``: several runs side by side, one row each, as a rich table,
JSON or CSV. The numbers are those of each run's report summary (paper Tables 3/5/6):
hours, kWh-PUE and CO2 include a retraining when the run has a ``retrain.json``.
Texts (a measured energy source, a run's name) print as text: rich ``Text`` cells, never
markup, and no control characters in the CSV that goes to a terminal."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from lemo_nade.numbers import MISSING, fmt, jsonable
from lemo_nade.reporting.data import COMPARE_COLUMNS, compare_row, load_run
from lemo_nade.text import plain


def compare_rows(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per run, in the order given; a missing run is a StoreError (bad input)."""
    return [compare_row(load_run(d)) for d in run_dirs]


def to_json(rows: list[dict[str, Any]]) -> str:
    doc = {
        "columns": list(COMPARE_COLUMNS),
        "rows": [jsonable(r) for r in rows],
    }
    return json.dumps(doc, indent=2) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COMPARE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {k: plain(v) if isinstance(v, str) else v for k, v in jsonable(r).items()} for r in rows
    )
    return buf.getvalue()


def rich_table(rows: list[dict[str, Any]]) -> Table:
    """Run id, dataset, llm, setting, iterations, best validation (and test) accuracy,
    parameters, hours, kWh-PUE, CO2, FPS, LLM cost and instructions followed."""
    table = Table(title="Runs compared (paper Tables 3/5/6 columns)")
    heads = (
        "run",
        "dataset",
        "llm",
        "setting",
        "iters",
        "val acc",
        "test acc",
        "params",
        "hours",
        "kWh-PUE",
        "CO2 lbs",
        "FPS",
        "energy",
        "LLM cost",
        "followed",
    )
    for h in heads:
        text = h in ("run", "dataset", "llm", "energy")
        # numbers never break across lines; the text columns fold instead
        table.add_column(
            h, justify="left" if text else "right", overflow="fold", no_wrap=not text or h == "run"
        )
    for r in rows:
        cost = r["llm_cost_usd"]
        status = "" if r["status"] == "finished" else f" ({r['status']})"
        table.add_row(
            Text(plain(r["run_id"])),
            Text(plain(r["dataset"])),
            Text(plain(r["llm"])),
            fmt(r["setting"]),
            Text(plain(f"{r['iterations']}{status}")),
            fmt(r["val_accuracy"], ".2%"),
            fmt(r["test_accuracy"], ".2%"),
            fmt(r["params"], ","),
            fmt(r["hours"], ".4f"),
            fmt(r["kwh_pue"], ".3e"),
            fmt(r["co2_lbs"], ".3e"),
            fmt(r["fps"], ",.0f"),
            Text(plain(r["energy_source"] or MISSING)),
            MISSING if cost is None else f"${cost:.4f}",
            _followed(r),
        )
    return table


def _followed(row: dict[str, Any]) -> str:
    """``14 of 18 (78%)``: instructions followed of those decided; ``+2?`` unknown."""
    decided = row["instructions_followed"] + row["instructions_not_followed"]
    if not decided and not row["instructions_unknown"]:
        return MISSING
    unknown = f" +{row['instructions_unknown']}?" if row["instructions_unknown"] else ""
    rate = fmt(row["instruction_follow_rate"], ".0%")
    return f"{row['instructions_followed']} of {decided} ({rate}){unknown}"
