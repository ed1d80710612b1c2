"""Commands that look without running a search: ``rules`` (what Algorithms 2 and 3
instruct for given metrics) and ``doctor`` (what is configured, what works here)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lemo_nade import rules
from lemo_nade.cli.app import app, friendly, json_arg, line, out
from lemo_nade.config import ConfigError, build_config
from lemo_nade.config_files import load_toml, parse_set
from lemo_nade.presets import DEFAULT_SEARCH, SEARCHES


@app.command("rules")
@friendly
def rules_cmd(
    metrics: Annotated[
        str, typer.Option(help='Measured metrics as JSON: {"A1":..,"A2":..,"E1":..,"E2":..,"F":..}')
    ],
    setting: Annotated[int, typer.Option(help="Paper Table 4 priority setting 1-5.")] = 1,
    priorities: Annotated[
        str | None, typer.Option(help='Override priorities as JSON, e.g. {"PF":0.5}.')
    ] = None,
    thresholds: Annotated[
        str | None, typer.Option(help='Override thresholds as JSON, e.g. {"TA1":0.9}.')
    ] = None,
    pursue: Annotated[
        bool,
        typer.Option(
            "--pursue/--no-pursue",
            help="As the default search asks (pursue = true): each prioritised energy or FPS "
            "threshold the metrics meet moves just past them, so its rule fires. "
            '--no-pursue: Algorithm 2 as written (search = "paper"), with a warning for '
            "each threshold its rule cannot reach.",
        ),
    ] = SEARCHES[DEFAULT_SEARCH]["pursue"],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what the expert system (Algorithms 2 and 3) instructs for given metrics."""
    cfg = build_config(
        {"setting": setting},
        {"priorities": json_arg(priorities, "priorities")},
        {"thresholds": json_arg(thresholds, "thresholds")},
    )
    values = json_arg(metrics, "metrics")
    unknown = sorted(set(values) - set(rules.METRIC_KEYS))
    if unknown:
        raise ConfigError(f"metrics: unknown key {unknown[0]!r}; allowed: A1, A2, E1, E2, F")
    _check_metrics(values)
    priority, given = cfg.priorities.model_dump(), cfg.thresholds.model_dump()
    threshold, warnings = given, rules.out_of_reach(values, priority, given)
    if pursue:
        threshold, warnings = rules.pursued(values, priority, given), []
    raw, resolved = rules.instructions_for(values, priority, threshold)
    if as_json:
        out_json = {"raw": raw, "resolved": resolved, "warnings": warnings}
        sys.stdout.write(json.dumps(out_json | {"thresholds": threshold}) + "\n")
        return
    from lemo_nade.cli.console import print_rules, print_warnings

    if pursue:
        moved = [f"{k} = {v:.4g}" for k, v in threshold.items() if v != given[k]]
        out.print("pursued: " + (", ".join(moved) or "none (no prioritised cost is met)"))
    print_rules(out, raw, resolved, rules.fired_rules(values, threshold))
    print_warnings(out, warnings)


def _check_metrics(values: dict[str, Any]) -> None:
    """Accuracies are fractions 0..1; energies (kWh) and FPS are finite and not negative."""
    for key, value in values.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            raise ConfigError(f"metrics.{key}: expected a finite number, got {value!r}")
        if key in ("A1", "A2") and not 0 <= value <= 1:
            raise ConfigError(
                f"metrics.{key}: accuracy is a fraction 0..1, got {value!r} (write 0.92, not 92)"
            )
        if value < 0:
            raise ConfigError(f"metrics.{key}: must be >= 0, got {value!r}")


@app.command("doctor")
@friendly
def doctor_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML run config.")] = None,
    llm: Annotated[
        str | None, typer.Option(help="Architect to check, e.g. ollama:llama3.1.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset to check (default: a run's).")] = (
        None
    ),
    data_dir: Annotated[str | None, typer.Option(help="Directory with the dataset files.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config overrides, e.g. base_url=URL.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the set-up: the architect's endpoint and key (never shown), torch, device,
    energy sensors and the built-in dataset. Exit 1 when a check fails."""
    from lemo_nade.cli.doctor import run_checks

    file_layer = load_toml(config) if config else {}
    flags = {"llm": llm, "dataset": dataset, "data_dir": data_dir}
    cfg = build_config(file_layer, flags, parse_set(set_ or []))
    checks = run_checks(cfg)
    if as_json:
        rows = [c.row() for c in checks]
        sys.stdout.write(json.dumps({"checks": rows}, indent=2) + "\n")
    else:
        from rich.table import Table

        table = Table(title="lemo-nade doctor")
        for name in ("check", "status", "detail"):
            table.add_column(name, overflow="fold")
        colour = {"ok": "green", "warn": "yellow", "fail": "red", "info": "cyan"}
        for c in checks:
            table.add_row(c.name, line((c.status, colour[c.status])), line(c.detail))
        out.print(table)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)
