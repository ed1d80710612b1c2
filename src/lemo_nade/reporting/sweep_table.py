"""A sweep's results as one table shaped like the paper's Tables 3-10, and a plot.

One row per planned run, in plan order (the product of the axes, the first axis
varying slowest: ``llm`` then ``setting`` gives Table 3's rows, ``temperature`` then
``setting`` gives Table 8's). The same rows are written as Markdown, CSV and JSON.
Metrics come from :func:`lemo_nade.reporting.rows.run_summary` over the run's store, so they
mean exactly what ``lemo-nade show`` says: the best candidate by CM, search energy
as kWh-PUE (Eq. 2) and CO2 (Eq. 3). ``hours`` is the search time; the paper's also
includes retraining. ``test_acc`` comes from each run's ``retrain.json`` (written by
``lemo-nade retrain``); it is empty before.

Pure except for the plot, which imports matplotlib (Agg, no display) when asked.
A failed run's reason can quote a candidate: every text cell is escaped for Markdown
(:func:`lemo_nade.text.md_cell`), the CSV's texts carry no control characters, and the
plot's labels are never mathtext.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lemo_nade.config import config_from_json
from lemo_nade.files import atomic_write
from lemo_nade.numbers import fmt, jsonable
from lemo_nade.reporting.data import load_retrain
from lemo_nade.reporting.rows import run_summary
from lemo_nade.store import DB_NAME, RunStore
from lemo_nade.sweeps.plan import read_plan, read_status, run_dir_of, shows_failed
from lemo_nade.text import md_cell, no_math, plain

PLOT_NAME = "accuracy_vs_energy.png"


# (key, Markdown header, format spec for :func:`lemo_nade.numbers.fmt`); the rows' other
# keys are the axes and "run", shown as they are.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("status", "status", ""),
    ("iterations_done", "iters", ""),
    ("test_accuracy", "test acc", ".2%"),
    ("val_accuracy", "val acc", ".2%"),
    ("params", "params", ","),
    ("search_hours", "hours", ".4g"),
    ("search_kwh_pue", "kWh-PUE", ".4g"),
    ("search_co2_lbs", "CO2 lbs", ".4g"),
    ("fps", "FPS", ",.0f"),
    ("infer_kwh_pue_per_image", "infer kWh-PUE/img", ".2E"),
    ("infer_co2_lbs_per_image", "infer CO2 lbs/img", ".2E"),
    ("energy_source", "energy", ""),
)


def sweep_rows(sweep_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The axis keys and one row per planned run (pending runs have empty metrics)."""
    plan = read_plan(sweep_dir)
    status = read_status(sweep_dir)
    rows = []
    for run in plan["runs"]:
        row: dict[str, Any] = {"run": run["name"], **run["axes"]}
        row.update(_run_metrics(run_dir_of(sweep_dir, run["name"]), status.get(run["name"])))
        rows.append(row)
    return list(plan["axes"]), rows


def _run_metrics(run_dir: Path, last: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {key: None for key, _, _ in METRICS}
    row.update(status="pending", iterations_done=0, error=None)
    if (run_dir / DB_NAME).is_file():
        with RunStore.open(run_dir) as store:
            records = store.iterations()
            row["status"] = store.status()[0]
            config = config_from_json(store.config_json())
        s = run_summary(records, config)
        row.update(
            iterations_done=s["iterations"],
            test_accuracy=(load_retrain(run_dir) or {}).get("test_accuracy"),
            val_accuracy=s["best_validation_accuracy"],
            params=s["best_params"],
            search_hours=s["search_hours"],
            search_kwh_pue=s["search_kwh_pue"],
            search_co2_lbs=s["search_co2_lbs"],
            fps=s["best_fps"],
            infer_kwh_pue_per_image=s["inference_kwh_pue_per_image"],
            infer_co2_lbs_per_image=s["inference_co2_lbs_per_image"],
            energy_source=s["energy_source"],
        )
    if last and shows_failed(last, row["status"]):
        row.update(status="failed", error=last.get("reason"))
    return row


def columns(axis_keys: list[str]) -> list[str]:
    return ["run", *axis_keys, *(key for key, _, _ in METRICS), "error"]


def to_markdown(axis_keys: list[str], rows: list[dict[str, Any]]) -> str:
    specs = {key: spec for key, _, spec in METRICS}
    headers = [*axis_keys, *(h for _, h, _ in METRICS)]
    keys = [*axis_keys, *(k for k, _, _ in METRICS)]
    lines = ["| " + " | ".join(md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [md_cell(fmt(row.get(k), specs.get(k, ""))) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r.get("error")]
    if failed:
        lines += ["", *(f"- {md_cell(r['run'])} failed: {md_cell(r['error'])}" for r in failed)]
    return "\n".join(lines) + "\n"


def to_csv(axis_keys: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(axis_keys), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: plain(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows)
    return buf.getvalue()


def to_json(sweep_dir: Path, axis_keys: list[str], rows: list[dict[str, Any]]) -> str:
    doc = {"sweep_dir": str(sweep_dir), "columns": columns(axis_keys), "rows": rows}
    return json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n"  # NaN: null


def plot_accuracy_vs_energy(axis_keys: list[str], rows: list[dict[str, Any]], path: Path) -> bool:
    """Best validation accuracy against search energy, one point per run, coloured by
    the first axis and labelled by the others. False (no file) when no run has both."""
    points = [r for r in rows if r["val_accuracy"] is not None and r["search_kwh_pue"]]
    if not points:
        return False
    from matplotlib.figure import Figure  # the object API: Agg, no global pyplot state

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    group_key, label_keys = (axis_keys[0], axis_keys[1:]) if axis_keys else (None, [])
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in points:
        groups.setdefault(str(row[group_key]) if group_key else "runs", []).append(row)
    for group, members in groups.items():
        xs = [r["search_kwh_pue"] for r in members]
        ys = [100 * r["val_accuracy"] for r in members]
        ax.scatter(xs, ys, label=no_math(f"{group_key}={group}" if group_key else group))
        for row, x, y in zip(members, xs, ys, strict=True):
            label = ",".join(f"{k}={row[k]}" for k in label_keys)
            if label:
                ax.annotate(
                    no_math(label), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
    energies = [r["search_kwh_pue"] for r in points]
    if max(energies) > 100 * min(energies):
        ax.set_xscale("log")
    ax.set_xlabel("search energy (kWh-PUE, Eq. 2)")
    ax.set_ylabel("best validation accuracy (%)")
    ax.set_title("accuracy vs energy across runs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    atomic_write(path, png.getvalue())
    return True


def write_sweep_report(
    sweep_dir: Path, out_dir: Path | None = None
) -> tuple[dict[str, str], list[Path]]:
    """Write ``sweep.md``, ``sweep.csv``, ``sweep.json`` and the plot into ``out_dir``
    (default ``SWEEP_DIR/report``); return the texts by file name and the files written.
    Each file is replaced atomically (a reader sees the old one or the whole new one); the
    set is not replaced as a whole."""
    axis_keys, rows = sweep_rows(sweep_dir)
    out_dir = out_dir or sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {
        "sweep.md": to_markdown(axis_keys, rows),
        "sweep.csv": to_csv(axis_keys, rows),
        "sweep.json": to_json(sweep_dir, axis_keys, rows),
    }
    written = []
    for name, text in texts.items():
        atomic_write(out_dir / name, text)
        written.append(out_dir / name)
    if plot_accuracy_vs_energy(axis_keys, rows, out_dir / PLOT_NAME):
        written.append(out_dir / PLOT_NAME)
    return texts, written
