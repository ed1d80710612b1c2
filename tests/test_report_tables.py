"""The tables as printed: every number goes through lemo_nade.numbers.fmt, so a missing or
non-finite value prints as a dash ("—" in files and the compare table, "-" in `show`)
instead of "nan" or a crash, and a finite one as it always did."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console

from lemo_nade.cli.console import LiveProgress, print_summary, print_table
from lemo_nade.config import build_config
from lemo_nade.reporting.compare import compare_rows, rich_table
from lemo_nade.reporting.sweep_table import to_json, to_markdown
from test_report import CHAIN, make_run


def _nan_energy(rec: Any) -> Any:
    """A candidate with a NaN E1, an infinite F and a NaN CM (what a failed sensor or a
    zero-time measurement can leave)."""
    ev = rec.evaluation
    metrics = dataclasses.replace(ev.metrics, E1=math.nan, F=math.inf)
    return dataclasses.replace(
        rec, evaluation=dataclasses.replace(ev, metrics=metrics), cm=math.nan
    )


def test_sweep_markdown_cells() -> None:
    row = {
        "run": "a",
        "llm": "x|y",
        "t": 0.7,
        "flag": True,
        "status": "finished",
        "iterations_done": 3,
        "test_accuracy": 0.91234,
        "val_accuracy": 1,
        "params": 12345,
        "search_hours": 0.000123456,
        "search_kwh_pue": 12345.678,
        "search_co2_lbs": math.nan,
        "fps": 1234.5,
        "infer_kwh_pue_per_image": 1.2345e-9,
        "infer_co2_lbs_per_image": math.inf,
        "energy_source": None,
        "error": None,
    }
    lines = to_markdown(["llm", "t", "flag"], [row]).splitlines()
    assert lines[2] == (
        "| x\\|y | 0.7 | True | finished | 3 | 91.23% | 100.00% | 12,345 | 0.0001235 "
        "| 1.235e+04 | — | 1,234 | 1.23E-09 | — | — |"
    )


def test_show_prints_a_dash_for_nan_and_the_live_line_survives_it(tmp_path: Path) -> None:
    records = [*CHAIN[:4], _nan_energy(CHAIN[4])]
    run = make_run(tmp_path / "run", records)
    console = Console(record=True, width=250, color_system=None)
    print_table(console, records)
    table = console.export_text()
    assert "│ ★ 3 │      1 │ ok           │ 0.910 │ 0.900 │ 20,000 │      - │ 4,000 │" in table
    row4 = next(line for line in table.splitlines() if line.startswith("│   4 │"))
    assert "nan" not in row4 and "inf" not in row4
    assert "│     - │ " in row4 and "│        - │ 1.00e-08 │" in row4  # F, E1

    print_summary(console, records, build_config({}), "finished", "iterations")
    summary = console.export_text()
    assert "best: iteration 3, CM 1.8000, validation accuracy 0.9000, params 20000" in summary
    assert "search: 0.0125 h, - kWh-PUE (ESTIMATE), - lbs CO2e" in summary
    assert "nan" not in summary

    live = LiveProgress(console, run)
    live._end(records[4], CHAIN[3])
    live._end(CHAIN[3], CHAIN[3])
    lines = console.export_text().splitlines()
    assert lines[-2] == "   4  ok  A1 0.860  A2 0.850  P 30,000  F -  CM -  next: -"
    assert lines[-1].startswith("   3  ok  A1 0.910  A2 0.900  P 20,000  F 4,000  CM 1.800")


def test_compare_table_shows_a_dash_for_nan(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [*CHAIN[:4], _nan_energy(CHAIN[4])])
    console = Console(record=True, width=250, color_system=None)
    console.print(rich_table(compare_rows([run])))
    line = next(x for x in console.export_text().splitlines() if x.startswith("│ run"))
    assert " 90.00% │        — │ 20,000 │ 0.0125 │       — │       — │ 4,000 │ estimate │" in line


def test_the_sweep_json_is_strict_json_when_a_figure_is_not_finite(tmp_path: Path) -> None:
    """A search energy that could not be summed (NaN) was written as a bare NaN token,
    which strict JSON parsers refuse; it is null."""

    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    rows = [{"run": "a", "search_kwh_pue": math.nan, "val_accuracy": 0.5, "nested": [math.inf]}]
    doc = json.loads(to_json(tmp_path, [], rows), parse_constant=refuse)
    assert doc["rows"][0]["search_kwh_pue"] is None and doc["rows"][0]["nested"] == [None]
    assert doc["rows"][0]["val_accuracy"] == 0.5
