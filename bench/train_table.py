"""The table ``bench/train.py`` prints: one row per measure, with its target.

It only formats: every number comes from the result dict that ``--json`` prints (rates
in images/s, FLOP rates in GFLOP/s, ratios ours over baseline).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from machine import describe


def print_table(result: dict[str, Any]) -> None:
    console = Console(width=150)
    cond = result["conditions"]
    console.print(describe(cond["before"], cond["after"]))
    console.print(
        f"data: {cond['data']}; batch {result['batch']}; {result['repeats']} interleaved repeats"
    )
    table = Table(show_lines=False)
    for col in ("measure", "ours", "baseline", "ratio wall (min..max); CPU", "target", "ok"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    if not result["allocator_tuned"]:
        console.print("note: the allocator setting did not take here (not glibc)")


def table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per measure, in the order of ``bench/train.py``'s parts 1, 2, 3, 4."""
    peak = result["matmul_peak_gflops"]
    rows = [training_row(t) for t in result["training"]]
    rows.append(augment_row(result["augment"]))
    rows += [flops_row(t, peak) for t in result["training"]]
    rows += [allocator_row(al) for al in result["allocator"]]
    return rows


def training_row(t: dict[str, Any]) -> tuple[str, ...]:
    return (
        f"training images/s, {t['model']} ({t['params'] / 1e3:.0f}k params) vs plain loop",
        f"{t['ours_ips']:.0f}",
        f"{t['base_ips']:.0f}",
        f"{t['ratio']:.3f} ({t['ratio_min']:.2f}..{t['ratio_max']:.2f}); CPU {t['cpu_ratio']:.3f}",
        ">= 0.95",
        "yes" if t["ratio"] >= 0.95 else "NO",
    )


def augment_row(aug: dict[str, Any]) -> tuple[str, ...]:
    return (
        "augmentation images/s, batched warp vs per-image loop",
        f"{aug['ours_ips']:.0f}",
        f"{aug['base_ips']:.0f}",
        f"{aug['ratio']:.1f}x ({aug['ratio_min']:.1f}..{aug['ratio_max']:.1f}); CPU "
        f"{aug['cpu_ratio']:.1f}x",
        ">= 5x",
        "yes" if aug["ratio"] >= 5 else "NO",
    )


def flops_row(t: dict[str, Any], peak: float) -> tuple[str, ...]:
    """Achieved training GFLOP/s against the matmul peak (GFLOP/s); no target."""
    return (
        f"training GFLOP/s, {t['model']} ({t['step_gflop']:.1f} GFLOP/step) vs matmul peak",
        f"{t['achieved_gflops']:.1f}",
        f"{peak:.1f}",
        f"{t['achieved_gflops'] / peak:.1%}",
        "report",
        "",
    )


def allocator_row(al: dict[str, Any]) -> tuple[str, ...]:
    return (
        f"plain loop images/s, {al['model']}: engine's malloc setting vs glibc default "
        "(fresh processes)",
        f"{al['tuned_ips']:.0f}",
        f"{al['default_ips']:.0f}",
        f"{al['ratio']:.2f}x ({al['ratio_min']:.2f}..{al['ratio_max']:.2f})",
        "report",
        "",
    )
