"""Terminal rendering with rich: the live per-iteration display and the tables.

Everything shown here also exists as JSON (``lemo-nade show --json``), built from
the same rows in ``report``. Text that a candidate or an LLM wrote (an error, a note, a
measured label) is printed as a rich ``Text`` through :func:`lemo_nade.cli.app.line`,
never as markup.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from lemo_nade import rules
from lemo_nade.cli.app import line as text_line
from lemo_nade.config import RunConfig, config_from_json
from lemo_nade.history import IterationRecord
from lemo_nade.numbers import fmt
from lemo_nade.records import Proposal, ProposalRequest
from lemo_nade.reporting.data import instructions_text
from lemo_nade.reporting.rows import iteration_row, iteration_rows, run_summary
from lemo_nade.search import Progress as SearchProgress
from lemo_nade.store import RunStore
from lemo_nade.text import one_line, plain

DASH = "-"  # a missing or non-finite value in the terminal (the report files show "—")


class LiveProgress:
    """A progress bar over iterations plus one line per finished candidate."""

    def __init__(self, console: Console, run_dir: Path) -> None:
        with RunStore.open(run_dir) as store:
            config = config_from_json(store.config_json())
            done = len(store.iterations())
        self.console = console
        self.total = config.iterations + config.promote
        # after the first trained candidate: thresholds its rules can never cross (with
        # `pursue`, a met energy or FPS threshold no longer stops its rule)
        self.warn_thresholds: tuple[dict[str, float], dict[str, float]] | None = (
            (config.priorities.model_dump(), config.thresholds.model_dump())
            if done == 0 and not config.pursue
            else None
        )
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("starting", total=self.total, completed=done)
        self.progress = SearchProgress(
            on_start=self._start,
            on_evaluating=self._evaluating,
            on_end=self._end,
            on_promote=self._promote,
        )

    def __enter__(self) -> LiveProgress:
        self.bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.bar.stop()

    def _start(self, idx: int, request: ProposalRequest) -> None:
        todo = " ".join(code for code, _ in request.instructions) or "initial model"
        self.bar.update(self.task, description=f"iteration {idx}: proposing ({todo})")

    def _promote(self, idx: int, candidate: int, epochs: int) -> None:
        text = f"iteration {idx}: training candidate {candidate} again for {epochs} epochs"
        self.bar.update(self.task, description=text)

    def _evaluating(self, idx: int, proposal: Proposal) -> None:
        self.bar.update(self.task, description=f"iteration {idx}: training and measuring")

    def _end(self, record: IterationRecord, best: IterationRecord | None) -> None:
        row = iteration_row(record, best.idx if best else None)
        if row["status"] == "ok":
            line = text_line(
                f"{row['iteration']:>4}  ok  A1 {fmt(row['A1'], '.3f', DASH)}  "
                f"A2 {fmt(row['A2'], '.3f', DASH)}  P {fmt(row['P'], ',', DASH)}  "
                f"F {fmt(row['F'], ',.0f', DASH)}  CM {fmt(row['CM'], '.3f', DASH)}",
                (" ★ best" if row["best"] else "", "bold green"),
                f"  followed {row['instructions_followed']}" if row["compliance"] else "",
                f"  {instructions_text(record)}" if record.promoted else "",
                f"  next: {' '.join(row['instructions_out']) or DASH}",
            )
        else:
            line = text_line(
                f"{row['iteration']:>4}  ",
                (row["status"], "red"),
                f"  {one_line(row['error'] or '')}",
            )
        self.console.print(line, soft_wrap=True)
        metrics = record.evaluation.metrics
        if self.warn_thresholds is not None and metrics is not None:
            print_warnings(
                self.console, rules.out_of_reach(metrics.for_rules(), *self.warn_thresholds)
            )
            self.warn_thresholds = None
        self.bar.advance(self.task)


def print_table(console: Console, records: list[IterationRecord]) -> None:
    table = Table(title="Iterations (★ = best by CM, Eq. 1)")
    columns = ("#", "parent", "status", "A1", "A2", "params", "MFLOPs", "FPS", "p50 ms")
    for name in (*columns, "E1 kWh", "E2 kWh", "energy source", "CM", "followed"):
        left = name in ("status", "followed")
        table.add_column(name, justify="left" if left else "right", no_wrap=True)
    table.add_column("instructions in", overflow="fold")
    for record, row in zip(records, iteration_rows(records), strict=True):
        table.add_row(
            ("★ " if row["best"] else "") + str(row["iteration"]),
            fmt(row["parent"], "", DASH),
            row["status"],
            fmt(row["A1"], ".3f", DASH),
            fmt(row["A2"], ".3f", DASH),
            fmt(row["P"], ",", DASH),
            fmt(row["flops_per_image"] / 1e6 if row["flops_per_image"] else None, ".3f", DASH),
            fmt(row["F"], ",.0f", DASH),
            fmt(row["latency_ms_p50"], ".3f", DASH),
            fmt(row["E1_kwh"], ".2e", DASH),
            fmt(row["E2_kwh"], ".2e", DASH),
            Text(plain(row["energy_source"] or DASH)),
            fmt(row["CM"], ".3f", DASH),
            row["instructions_followed"] or DASH,
            instructions_text(record),
            style="bold green" if row["best"] else None,
        )
    console.print(table)


def print_errors(console: Console, records: list[IterationRecord]) -> None:
    """Each failed candidate's status and the last line of its error, as text."""
    failed = [r for r in iteration_rows(records) if r["status"] != "ok"]
    if failed:
        console.print("failed candidates:")
    for row in failed:
        error = one_line(row["error"] or "") or DASH
        console.print(
            text_line(f"{row['iteration']:>4}  ", (row["status"], "red"), f"  {error}"),
            soft_wrap=True,
        )


MARKS = {"followed": "✓", "not_followed": "✗", "unknown": "?"}


def print_compliance(console: Console, records: list[IterationRecord]) -> None:
    """Per checked candidate, each instruction that produced it and whether it was
    followed; the facts compared where it was not (or could not be decided)."""
    checked = [r for r in iteration_rows(records) if r["compliance"]]
    if checked:
        console.print("instructions followed (✓ followed, ✗ not, ? unknown):")
    for row in checked:
        verdicts = "  ".join(
            f"{v['code']} {MARKS.get(v['verdict'], '?')}"
            + ("" if v["verdict"] == "followed" else f" ({v['reason']})")
            for v in row["compliance"]
        )
        console.print(
            text_line(f"{row['iteration']:>4}  {row['instructions_followed']}:  {verdicts}"),
            soft_wrap=True,
        )


def print_summary(
    console: Console,
    records: list[IterationRecord],
    config: RunConfig,
    status: str,
    reason: str | None,
) -> None:
    s = run_summary(records, config)
    source = s["energy_source"] or DASH
    label = " (ESTIMATE)" if s["energy_estimated"] else ""
    console.print(
        text_line(
            f"status: {status} ({reason or DASH}); iterations: {s['iterations']}; "
            + (f"promotions: {s['promotions']}; " if s["promotions"] else "")
            + f"invalid candidates: {fmt(s['invalid_rate'], '.0%', DASH)}"
        )
    )
    console.print(
        f"best: iteration {fmt(s['best_iteration'], '', DASH)}, "
        f"CM {fmt(s['best_cm'], '.4f', DASH)}, "
        f"validation accuracy {fmt(s['best_validation_accuracy'], '.4f', DASH)}, "
        f"params {fmt(s['best_params'], '', DASH)}, FPS {fmt(s['best_fps'], ',.0f', DASH)}"
    )
    console.print(
        text_line(
            f"search: {fmt(s['search_hours'], '.4f', DASH)} h, "
            f"{fmt(s['search_kwh_pue'], '.3e', DASH)} kWh-PUE{label}, "
            f"{fmt(s['search_co2_lbs'], '.3e', DASH)} lbs CO2e  ",
            (f"(energy source: {source}; PUE {s['pue']}, {s['co2_lbs_per_kwh']} lbs/kWh)", "dim"),
        )
    )
    if s["instructions_checked"]:
        console.print(text_line(f"instructions followed: {following_text(s)}"))
    if s.get("llm_calls"):
        cost = s["llm_cost_usd"]
        console.print(
            f"LLM: {s['llm_calls']} calls, {s['llm_prompt_tokens']:,} tokens in, "
            f"{s['llm_completion_tokens']:,} out, {s['llm_latency_s']:.1f} s, "
            f"cost {'unknown' if cost is None else f'${cost:.4f}'}; "
            f"invalid answers: {fmt(s['attempt_invalid_rate'], '.0%', DASH)} "
            f"of {s['attempts']} attempts",
            highlight=False,
        )
    print_paper_row(console, s)


def following_text(s: dict[str, Any]) -> str:
    """A run summary's instruction following: ``14 of 18 decided (78%), 2 unknown, over
    7 candidates``."""
    decided = s["instructions_followed"] + s["instructions_not_followed"]
    return (
        f"{s['instructions_followed']} of {decided} decided "
        f"({fmt(s['instruction_follow_rate'], '.0%', DASH)}), "
        f"{s['instructions_unknown']} unknown, over {s['candidates_checked']} candidates"
    )


def print_paper_row(console: Console, s: dict[str, Any]) -> None:
    """The run as one row with the columns of the paper's Tables 3, 5 and 6."""
    est = " ESTIMATE" if s["energy_estimated"] else ""
    table = Table(
        title=Text(
            plain(f"Run, paper Tables 3/5/6 columns (energy source: {s['energy_source']})"),
            style="table.title",  # what a str title gets; a Text is never read as markup
        )
    )
    heads = (
        "val. accuracy",
        "params",
        "generating + training h",
        f"energy kWh-PUE{est}",
        f"CO2 lbs{est}",
        "inference FPS",
        f"inference kWh-PUE / image{est}",
        f"inference CO2 lbs / image{est}",
    )
    for name in heads:
        table.add_column(name, justify="right", overflow="fold")
    table.add_row(
        fmt(s["best_validation_accuracy"], ".2%", DASH),
        fmt(s["best_params"], "", DASH),
        fmt(s["search_hours"], ".4f", DASH),
        fmt(s["search_kwh_pue"], ".4e", DASH),
        fmt(s["search_co2_lbs"], ".4e", DASH),
        fmt(s["best_fps"], ".2f", DASH),
        fmt(s["inference_kwh_pue_per_image"], ".2e", DASH),
        fmt(s["inference_co2_lbs_per_image"], ".2e", DASH),
    )
    console.print(table)
    if s["energy_estimated"] and s.get("energy_note"):
        console.print(text_line((f"energy estimated: {s['energy_note']}", "dim")))


def print_warnings(console: Console, warnings: list[str]) -> None:
    for warning in warnings:
        console.print(text_line(("warning: ", "bold yellow"), warning), soft_wrap=True)


def print_rules(
    console: Console,
    raw: dict[str, float],
    resolved: list[tuple[str, float]],
    fired: list[rules.Rule],
) -> None:
    console.print(
        "rules fired: " + (", ".join(f"line {r.line}: {r.text}" for r in fired) or "none")
    )
    table = Table(title="Algorithm 2 (raw) → Algorithm 3 (resolved)")
    table.add_column("instruction")
    table.add_column("meaning")
    table.add_column("raw", justify="right")
    table.add_column("resolved", justify="right")
    kept = dict(resolved)
    for code in rules.INSTRUCTIONS:
        table.add_row(
            code,
            rules.DESCRIPTIONS[code],
            f"{raw[code]:g}",
            f"{kept[code]:g}" if code in kept else "-",
        )
    console.print(table)
    console.print("next prompt, in order: " + ("; ".join(rules.describe(resolved)) or "(none)"))
