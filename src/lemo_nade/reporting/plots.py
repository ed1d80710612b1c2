"""The report's plots, drawn with matplotlib's object API (Agg, no display, no pyplot
state). Each ``fig_*`` function takes the run's data and returns a Figure;
:func:`draw_all` saves them as PNG. matplotlib is imported here only. A label that a
candidate's process measured (the energy source) goes through
:func:`lemo_nade.text.no_math`: a ``$`` in it is never mathtext."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lemo_nade import rules
from lemo_nade.history import best_of
from lemo_nade.reporting.data import RunData, instruction_counts, pareto_iterations
from lemo_nade.text import no_math

DPI = 110
OK_COLOUR = "#2b7bba"
BEST_COLOUR = "#e6a100"
FAIL_COLOUR = "#c0392b"


def _best_idx(data: RunData) -> int | None:
    best = best_of(data.records)
    return best.idx if best else None


def _iteration_axis(ax: Any, data: RunData) -> None:
    idxs = [r.idx for r in data.records]
    if len(idxs) <= 30:
        ax.set_xticks(idxs)
    ax.set_xlabel("iteration")
    ax.grid(True, alpha=0.3)


def _mark_failed(ax: Any, data: RunData, y: float) -> None:
    failed = [r.idx for r in data.records if r.evaluation.metrics is None]
    if failed:
        ax.scatter(
            failed, [y] * len(failed), marker="x", color=FAIL_COLOUR, label="failed", zorder=3
        )


def fig_cm_accuracy(data: RunData) -> Figure:
    """CM (Eq. 1) and training/validation accuracy per iteration; failed ones marked."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax_cm, ax_acc = fig.subplots(2, 1, sharex=True)
    ok = data.ok_records
    xs = [r.idx for r in ok]
    cms = [r.cm if r.cm is not None else math.nan for r in ok]
    ax_cm.plot(xs, cms, "o-", color=OK_COLOUR, label="CM")
    best = _best_idx(data)
    if best is not None:
        rec = next(r for r in ok if r.idx == best)
        ax_cm.scatter(
            [best], [rec.cm], marker="*", s=260, color=BEST_COLOUR, zorder=4, label="best"
        )
    _mark_failed(ax_cm, data, min((c for c in cms if math.isfinite(c)), default=0.0))
    ax_cm.set_ylabel("CM (Eq. 1)")
    ax_cm.set_title("combined effectiveness and accuracy per iteration")
    ax_cm.legend(fontsize=8)
    ax_cm.grid(True, alpha=0.3)
    metrics = [r.evaluation.metrics for r in ok if r.evaluation.metrics]
    ax_acc.plot(xs, [100 * m.A1 for m in metrics], "s--", color="#7f8c8d", label="training (A1)")
    ax_acc.plot(xs, [100 * m.A2 for m in metrics], "o-", color=OK_COLOUR, label="validation (A2)")
    _mark_failed(ax_acc, data, 0.0)
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend(fontsize=8)
    _iteration_axis(ax_acc, data)
    return fig


def fig_pareto(data: RunData) -> Figure:
    """Validation accuracy against parameters, coloured by the candidate's energy, with
    the Pareto front (max accuracy, min parameters) drawn as a step line."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    ok = data.ok_records
    metrics = [r.evaluation.metrics for r in ok if r.evaluation.metrics]
    params = [m.P for m in metrics]
    accs = [100 * m.A2 for m in metrics]
    energy = [(m.E1 + m.E2) * data.config.pue for m in metrics]
    sc = ax.scatter(params, accs, c=energy, cmap="viridis", s=60, edgecolors="k", linewidths=0.5)
    fig.colorbar(sc, ax=ax, label="candidate energy E1+E2 (kWh-PUE)")
    front = set(pareto_iterations(ok))
    on_front = sorted(
        ((m.P, 100 * m.A2) for r, m in zip(ok, metrics, strict=True) if r.idx in front)
    )
    if on_front:
        fx, fy = zip(*on_front, strict=True)
        ax.step(fx, fy, where="post", color=FAIL_COLOUR, lw=1.5, label="Pareto front")
        ax.scatter(fx, fy, s=160, facecolors="none", edgecolors=FAIL_COLOUR, linewidths=1.5)
    best = _best_idx(data)
    labels: dict[tuple[int, float], list[str]] = {}  # one label per point: "#3/#4"
    for r, m in zip(ok, metrics, strict=True):
        labels.setdefault((m.P, round(100 * m.A2, 2)), []).append(f"#{r.idx}")
    for (x, y), names in labels.items():
        ax.annotate("/".join(names), (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    for r, m in zip(ok, metrics, strict=True):
        if r.idx == best:
            ax.scatter(
                [m.P],
                [100 * m.A2],
                marker="*",
                s=260,
                color=BEST_COLOUR,
                zorder=4,
                label="best by CM",
            )
    if params and max(params) > 20 * min(params):
        ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("accuracy vs parameters (Pareto front: max accuracy, min parameters)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def fig_energy(data: RunData) -> Figure:
    """Training (E1) and validation (E2) energy per candidate in kWh-PUE, log scale; the
    title and legend name the energy source (estimate or a sensor)."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    ok = data.ok_records
    metrics = [r.evaluation.metrics for r in ok if r.evaluation.metrics]
    xs = [r.idx for r in ok]
    pue = data.config.pue
    e1 = [m.E1 * pue for m in metrics]
    e2 = [m.E2 * pue for m in metrics]
    sources = sorted({m.energy_source for m in metrics})
    estimated = any("estimate" in s or "unmeasured" in s for s in sources)
    kind = "ESTIMATE" if estimated else "measured"
    hatch = "//" if estimated else None
    w = 0.4
    ax.bar(
        [x - w / 2 for x in xs], e1, w, color=OK_COLOUR, hatch=hatch, label=f"training E1 ({kind})"
    )
    ax.bar(
        [x + w / 2 for x in xs],
        e2,
        w,
        color="#95a5a6",
        hatch=hatch,
        label=f"validation E2 ({kind})",
    )
    if len(sources) > 1:
        for x, m, top in zip(xs, metrics, e1, strict=True):
            ax.annotate(
                no_math(m.energy_source),
                (x, top),
                fontsize=7,
                ha="center",
                xytext=(0, 2),
                textcoords="offset points",
            )
    positive = [v for v in e1 + e2 if v > 0]
    if positive:
        ax.set_yscale("log")
    _mark_failed(ax, data, min(positive) if positive else 0.0)
    ax.set_ylabel(f"energy (kWh-PUE, Eq. 2, PUE {pue:g})")
    ax.set_title(no_math(f"energy per candidate — source: {', '.join(sources) or 'none'} ({kind})"))
    ax.legend(fontsize=8)
    _iteration_axis(ax, data)
    return fig


def fig_instructions(data: RunData) -> Figure:
    """How often the expert system asked for each instruction (Algorithms 2-3 output
    that went into a prompt), in rule-book order."""
    counts = instruction_counts(data.records)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    codes = list(counts)
    labels = [f"{c}: {rules.DESCRIPTIONS.get(c, c)}" for c in codes]
    ys = list(range(len(codes)))
    ax.barh(ys, [counts[c] for c in codes], color=OK_COLOUR)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("candidates whose prompt carried the instruction")
    total = sum(counts.values())
    ax.set_title(
        "instruction frequency" if total else "instruction frequency (no instructions issued yet)"
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def fig_lineage(data: RunData) -> Figure:
    """Each candidate at (iteration, validation accuracy), an arrow from its parent,
    labelled with the instructions; failed candidates sit on the bottom line."""
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    pos: dict[int, tuple[float, float]] = {}
    ok_acc = [100 * r.evaluation.metrics.A2 for r in data.ok_records if r.evaluation.metrics]
    floor = min(ok_acc, default=0.0) - 5.0
    for r in data.records:
        m = r.evaluation.metrics
        pos[r.idx] = (r.idx, 100 * m.A2 if m else floor)
    best = _best_idx(data)
    front = set(pareto_iterations(data.ok_records))
    for r in data.records:
        if r.parent_idx is None or r.parent_idx not in pos:
            continue
        ax.annotate(
            "",
            xy=pos[r.idx],
            xytext=pos[r.parent_idx],
            arrowprops={
                "arrowstyle": "->",
                "color": "#7f8c8d",
                "lw": 1,
                "shrinkA": 6,
                "shrinkB": 6,
            },
        )
        (x0, y0), (x1, y1) = pos[r.parent_idx], pos[r.idx]
        codes = " ".join(c for c, _ in r.prompt_instructions) or "explore"
        if len(codes) > 24:
            codes = codes[:22] + "…"
        ax.annotate(codes, ((x0 + x1) / 2, (y0 + y1) / 2), fontsize=7, color="#555", ha="center")
    for r in data.records:
        x, y = pos[r.idx]
        if r.evaluation.metrics is None:
            ax.scatter([x], [y], marker="x", color=FAIL_COLOUR, s=60, zorder=3)
        else:
            colour = BEST_COLOUR if r.idx == best else OK_COLOUR
            ax.scatter(
                [x], [y], s=90 if r.idx in front else 50, color=colour, edgecolors="k", zorder=3
            )
        ax.annotate(f"#{r.idx}", (x, y), fontsize=8, xytext=(5, -10), textcoords="offset points")
    ax.set_ylabel("validation accuracy (%); failed at the bottom")
    ax.set_title("lineage: parent → child, labelled with the instructions (gold: best by CM)")
    _iteration_axis(ax, data)
    return fig


PLOTS: tuple[tuple[str, str, Callable[[RunData], Figure]], ...] = (
    ("cm_accuracy.png", "CM and validation accuracy per iteration", fig_cm_accuracy),
    ("pareto.png", "Validation accuracy vs parameters, Pareto front marked", fig_pareto),
    ("energy.png", "Energy per iteration", fig_energy),
    ("instructions.png", "Instruction frequency", fig_instructions),
    ("lineage.png", "Lineage graph", fig_lineage),
)


def draw_all(data: RunData, out_dir: Path) -> list[tuple[str, str]]:
    """Draw every plot into ``out_dir``; (file name, caption) in report order."""
    for name, _, figure in PLOTS:
        figure(data).savefig(out_dir / name, dpi=DPI, metadata={"Software": None})
    return [(name, caption) for name, caption, _ in PLOTS]
