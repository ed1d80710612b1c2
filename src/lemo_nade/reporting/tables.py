"""The tables of a run's report, as formatted text cells (Markdown and HTML render them:
:mod:`lemo_nade.reporting.render`): the paper-style summary, the iterations, the lineage
with whether each child followed its instructions, and instruction following per
instruction.

Pure: no torch, no matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lemo_nade import rules
from lemo_nade.numbers import MISSING, fmt
from lemo_nade.reporting.data import (
    NOT_MEASURED,
    RunData,
    instructions_text,
    lineage_rows,
    paper_row,
    pareto_iterations,
)
from lemo_nade.text import one_line

VERDICT_KEYS = ("followed", "not_followed", "unknown")


@dataclass(frozen=True)
class Table:
    """Cells already formatted as text; ``text_cols`` are left-aligned in HTML; a row's
    class (``best``/``failed``) is only used by HTML."""

    headers: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    text_cols: frozenset[int] = frozenset()
    row_classes: tuple[str, ...] = ()
    wide_cols: frozenset[int] = frozenset()  # long text: given room in HTML


def summary_table(data: RunData) -> Table:
    """The paper's Tables 3/5/6 columns (plus validation accuracy and energy source)."""
    p = paper_row(data)
    est = " (estimate)" if p["energy_estimated"] else ""
    time_scope = "" if p["includes_retrain"] else " (search only)"
    headers = (
        "test accuracy",
        "validation accuracy",
        "parameters",
        f"generating + training hours{time_scope}",
        f"energy kWh-PUE{est}",
        f"CO2 lbs{est}",
        "inference FPS",
        f"inference kWh-PUE / image{est}",
        f"inference CO2 lbs / image{est}",
        "energy source",
    )
    row = (
        fmt(p["test_accuracy"], ".2%") if p["test_accuracy"] is not None else NOT_MEASURED,
        fmt(p["validation_accuracy"], ".2%"),
        fmt(p["params"], ","),
        fmt(p["hours"], ".4f"),
        fmt(p["kwh_pue"], ".4f" if (p["kwh_pue"] or 0) >= 1e-3 else ".3E"),
        fmt(p["co2_lbs"], ".4f" if (p["co2_lbs"] or 0) >= 1e-3 else ".3E"),
        fmt(p["fps"], ",.2f"),
        fmt(p["inference_kwh_pue_per_image"], ".2E"),
        fmt(p["inference_co2_lbs_per_image"], ".2E"),
        p["energy_source"] or MISSING,
    )
    return Table(headers, [row], text_cols=frozenset({0, 9}))


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a space, with "…" when cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ,;:") + "…"


def iterations_table(data: RunData) -> Table:
    rows, classes = [], []
    by_idx = {r.idx: r for r in data.records}
    front = set(pareto_iterations(data.ok_records))
    for row in data.rows:
        rec = by_idx[row["iteration"]]
        marks = ("★ " if row["best"] else "") + ("◆ " if row["iteration"] in front else "")
        mflops = row["flops_per_image"] / 1e6 if row["flops_per_image"] else None
        rows.append(
            (
                marks + str(row["iteration"]),
                fmt(row["parent"]),
                row["status"],
                fmt(row["A1"], ".2%"),
                fmt(row["A2"], ".2%"),
                fmt(row["P"], ","),
                fmt(mflops, ".3f"),
                fmt(row["F"], ",.0f"),
                fmt(row["E1_kwh"], ".2e"),
                fmt(row["E2_kwh"], ".2e"),
                row["energy_source"] or MISSING,
                fmt(row["CM"], ".3f"),
                instructions_text(rec),
                " ".join(row["instructions_out"]) or MISSING,
                clip(one_line(row["error"] or row["notes"] or ""), 200),
            )
        )
        classes.append("best" if row["best"] else ("failed" if row["status"] != "ok" else ""))
    headers = (
        "#",
        "parent",
        "status",
        "A1",
        "A2",
        "params",
        "MFLOPs",
        "FPS",
        "E1 kWh",
        "E2 kWh",
        "energy source",
        "CM",
        "instructions in (produced it)",
        "instructions out (for the next)",
        "notes / error",
    )
    return Table(headers, rows, frozenset({2, 10, 12, 13, 14}), tuple(classes), frozenset({14}))


def lineage_table(data: RunData) -> Table:
    rows = []
    for row in lineage_rows(data.records):
        parent = MISSING if row["parent"] is None else f"#{row['parent']}"
        what = "; ".join(row["described"]) or (
            "initial model" if row["parent"] is None else "no instruction (explore)"
        )
        verdicts = "; ".join(
            f"{v.code} {v.verdict.replace('_', ' ')}: {v.reason}" for v in row["verdicts"]
        )
        followed = f"{row['followed']}: {verdicts}" if verdicts else MISSING
        rows.append(
            (f"#{row['child']}", parent, what, followed, row["status"], fmt(row["cm"], ".3f"))
        )
    headers = ("child", "← parent", "instructions", "followed (facts compared)", "status", "CM")
    return Table(headers, rows, frozenset({2, 3, 4}), wide_cols=frozenset({3}))


def following_table(data: RunData) -> Table:
    """Instruction following per instruction: followed, not followed, unknown, rate."""
    by_code = data.summary["instructions_by_code"]
    rows = [
        (
            code,
            rules.DESCRIPTIONS.get(code, code),
            *(str(c[k]) for k in VERDICT_KEYS),
            fmt(c["rate"], ".0%"),
        )
        for code, c in sorted(by_code.items(), key=lambda item: _order(item[0]))
    ]
    headers = ("instruction", "meaning", "followed", "not followed", "unknown", "rate")
    return Table(headers, rows, frozenset({0, 1}))


def _order(code: str) -> int:
    return rules.INSTRUCTIONS.index(code) if code in rules.INSTRUCTIONS else len(rules.INSTRUCTIONS)
