"""A candidate's or an LLM's text is data (issue 16, point 4): printed in the console,
`show`, `compare`, the report, the sweep table and the CLI's error handler, it is never
read as rich markup, mathtext or HTML, and no terminal control sequence gets through.

One hostile text is the error of a failed candidate, the notes, code comment and energy
source of a good one, in a hand-made run (test_report.py's), and every printer is
checked to (a) not raise, (b) write no ESC/BEL/C1/bidi control, (c) write no live
``<script>`` into HTML and (d) still show the message as written. Rich consoles here are
forced terminals with colours: markup, if it were interpreted, would be applied."""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lemo_nade.cli import app, discover, results, sweeps
from lemo_nade.cli.console import LiveProgress
from lemo_nade.records import Evaluation, Status
from lemo_nade.reporting import sweep_table
from lemo_nade.store import RunStore, StoreError
from lemo_nade.text import md_cell, no_math, one_line, plain
from test_report import CHAIN, make_run

app_module = importlib.import_module("lemo_nade.cli.app")  # the package's "app" is Typer's

# The part before the last line break is where a traceback's body would be: the rows keep
# an error's last line only (str.splitlines also splits at "\r"), which holds the rest.
HOSTILE = (
    "Traceback (most recent call last):\r\x08 a|b\n"
    "ValueError: [/] [bold red]x[/] [link=file:///etc/passwd]a[/link] "
    "\x1b[2J\x1b]8;;http://x\x07y\x1b]8;;\x07 \x07\x9b2J <script>alert(1)</script> "
    "cost $\\alpha$ $\\frac{$ \u202eevil | end"
)
SHOWN = ("[/]", "[bold red]x[/]", "[link=file:///etc/passwd]a[/link]", "$\\alpha$", "| end")
# What no output may hold: C0 controls but tab and newline (ESC, BEL, CR, backspace), DEL,
# C1 controls (8-bit CSI and OSC), bidi overrides.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
SGR = re.compile(r"\x1b\[[0-9;]*m")  # the colours rich itself writes on a terminal
runner = CliRunner()


def visible(text: str) -> str:
    """``text`` without rich's own colour codes, checked to hold no other control."""
    text = SGR.sub("", text)
    found = CONTROL.search(text)
    assert found is None, f"control {found.group()!r} at {found.start()}: {text!r}"
    return text


def assert_shown(text: str, forms: tuple[str, ...] = SHOWN) -> None:
    for form in forms:
        assert form in text, f"{form!r} not shown as written in {text!r}"


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=400)


def output(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


@pytest.fixture
def hostile_run(tmp_path: Path) -> Path:
    """#0 good with the hostile notes and energy source; #1 failed with it as its error;
    #2 the best, with a plain source (two sources: the energy plot labels each bar) and
    the hostile text in its code (the report shows the best model's code)."""
    good = CHAIN[0]
    assert good.evaluation.metrics is not None
    metrics = dataclasses.replace(good.evaluation.metrics, energy_source="estimate " + HOSTILE)
    rec0 = dataclasses.replace(
        good,
        notes=HOSTILE,
        evaluation=dataclasses.replace(good.evaluation, metrics=metrics),
    )
    rec1 = dataclasses.replace(
        CHAIN[2], idx=1, parent_idx=0, evaluation=Evaluation(Status.FAILED_TRAIN, error=HOSTILE)
    )
    rec2 = dataclasses.replace(CHAIN[3], idx=2, parent_idx=0, code=f"# {HOSTILE}\n")
    return make_run(tmp_path / "run", [rec0, rec1, rec2])


@pytest.fixture
def consoles(monkeypatch: pytest.MonkeyPatch) -> tuple[Console, Console]:
    """The CLI's stdout and stderr consoles replaced by forced terminals."""
    out, err = terminal(), terminal()
    for module in (app_module, discover, results, sweeps):
        if hasattr(module, "out"):
            monkeypatch.setattr(module, "out", out)
        monkeypatch.setattr(module, "err", err)
    return out, err


# -- the helper ----------------------------------------------------------------------------


def test_plain_removes_sequences_and_shows_other_controls() -> None:
    assert plain("a \x1b[31mred\x1b[0m b") == "a red b"
    assert plain("\x1b]8;;http://x\x07link\x1b]8;;\x1b\\") == "link"
    assert plain("\x9b2Jx") == "x"
    assert plain("bell\x07 back\x08 cr\r nul\x00 c1\x85 \u202eevil") == (
        "bell\\x07 back\\x08 cr\\r nul\\x00 c1\\x85 \\u202eevil"
    )
    assert plain("keeps\ttab\r\nand newline") == "keeps\ttab\nand newline"
    assert plain("[bold]not markup[/] <b>") == "[bold]not markup[/] <b>"  # the format's job
    assert one_line("a\n  b\tc") == "a b c"
    cell = md_cell("a|b\n[x](javascript:1) <i> `c|d` &lt;")
    assert cell == "a\\|b \\[x\\](javascript:1) \\<i\\> `c\\|d` \\&lt;"
    assert no_math("$\\alpha$ costs $3") == "\\$\\alpha\\$ costs \\$3"


# -- the console ---------------------------------------------------------------------------


def test_live_progress_lines(hostile_run: Path) -> None:
    console = terminal()
    live = LiveProgress(console, hostile_run)
    with RunStore.open(hostile_run) as store:
        records = store.iterations()
    for rec in records:
        live._end(rec, records[2])
    lines = visible(output(console)).splitlines()
    assert lines[1].startswith("   1  failed_train  ValueError: [/] [bold red]x[/]")
    assert_shown(lines[1])
    assert lines[2].startswith("   2  ok  A1 0.910") and "★ best" in lines[2]


def test_show_table_and_json(hostile_run: Path, consoles: tuple[Console, Console]) -> None:
    out, err = consoles
    result = runner.invoke(app, ["show", str(hostile_run)])
    assert result.exit_code == 0, output(err) + result.output
    text = visible(output(out))
    failed = next(x for x in text.splitlines() if x.startswith("   1  failed_train"))
    assert_shown(failed)
    assert "[2J" not in text and "]8;;" not in text and "\\x07" in text  # bell shown

    result = runner.invoke(app, ["show", str(hostile_run), "--json"])
    assert result.exit_code == 0, result.output
    visible(result.stdout)
    doc = json.loads(result.stdout)
    rows = {r["iteration"]: r for r in doc["iterations"]}
    assert rows[0]["notes"] == HOSTILE  # JSON keeps the text exactly, escaped by json
    assert rows[1]["error"] == HOSTILE.splitlines()[-1]


def test_compare_table_json_and_csv(hostile_run: Path, consoles: tuple[Console, Console]) -> None:
    out, err = consoles
    result = runner.invoke(app, ["compare", str(hostile_run)])
    assert result.exit_code == 0, output(err) + result.output
    table = visible(output(out))
    assert "estimate" in table and "[2J" not in table
    for flag in ("--json", "--csv"):
        result = runner.invoke(app, ["compare", str(hostile_run), flag])
        assert result.exit_code == 0, result.output
        assert "estimate Traceback" in visible(result.stdout)
    assert json.loads(runner.invoke(app, ["compare", str(hostile_run), "--json"]).stdout)


# -- the report ----------------------------------------------------------------------------


def test_report_markdown_html_and_plots(
    hostile_run: Path, consoles: tuple[Console, Console]
) -> None:
    """The real plots: a ``$\\frac{$`` label would fail in mathtext when drawn."""
    out, err = consoles
    result = runner.invoke(app, ["report", str(hostile_run)])
    assert result.exit_code == 0, output(err) + result.output
    visible(output(out))
    md = visible((hostile_run / "report" / "report.md").read_text())
    row = next(x for x in md.splitlines() if x.startswith("| 1 | 0 | failed_train |"))
    assert row.endswith(" |") and row.count(" | ") == 14  # the "|" in the text is escaped
    assert_shown(row, tuple(md_cell(form) for form in SHOWN))
    assert "\\<script\\>alert(1)\\</script\\>" in row
    notes = next(x for x in md.splitlines() if re.match(r"\| (◆ )?0 \|", x))
    assert notes.count(" | ") == 14 and "\\<script\\>" in notes
    assert_shown(notes, tuple(md_cell(form) for form in SHOWN))
    text, code = md.split("## Best model: candidate #2")
    assert "<script>" not in text and "```python\n# Traceback" in code  # code is in a fence
    page = visible((hostile_run / "report" / "report.html").read_text())
    assert page.count("<script>") == 1  # the report's own image check, under the CSP
    # the error, the notes, the code, the energy source in the summary and in row #0
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 5
    assert_shown(page)


# -- the sweep table -----------------------------------------------------------------------


def test_sweep_table_and_progress(tmp_path: Path, consoles: tuple[Console, Console]) -> None:
    row: dict[str, Any] = {key: None for key, _, _ in sweep_table.METRICS}
    good = {**row, "run": "a", "llm": "x $y$", "status": "finished"}
    good.update(val_accuracy=0.9, search_kwh_pue=1e-3)
    bad = {**row, "run": "b", "llm": HOSTILE, "status": "failed", "error": HOSTILE}
    bad.update(val_accuracy=0.8, search_kwh_pue=2e-3)
    md = visible(sweep_table.to_markdown(["llm"], [good, bad]))
    failed = next(x for x in md.splitlines() if x.startswith("| Traceback"))
    assert failed.count(" | ") == len(sweep_table.METRICS)
    assert md.splitlines()[-1].startswith("- b failed: Traceback (most recent call last):\\\\r")
    assert_shown(md, tuple(md_cell(form) for form in SHOWN))
    visible(sweep_table.to_csv(["llm"], [good, bad]))
    label = "$\\frac{$ [/] \x1b[2J"  # mathtext would fail on it when the figure is drawn
    plotted = [{**good, "llm": label, "setting": label}, {**bad, "llm": "z", "setting": 1}]
    assert sweep_table.plot_accuracy_vs_energy(["setting", "llm"], plotted, tmp_path / "p.png")

    out, _ = consoles
    progress = sweeps._progress(2, tmp_path / "[/]sweep", "local")
    progress.on_ready([], ("a",))
    outcome = type("Outcome", (), {"state": "failed", "name": "b", "seconds": 1.0})()
    outcome.reason = HOSTILE
    progress.on_outcome(outcome)
    text = visible(output(out))
    assert "sweep directory: " in text and "[/]sweep" in text
    assert_shown(text.splitlines()[-1])


# -- the error handler ---------------------------------------------------------------------


@pytest.mark.parametrize(("error", "code"), [(RuntimeError, 1), (StoreError, 2)])
def test_the_error_handler_prints_the_text(
    hostile_run: Path,
    consoles: tuple[Console, Console],
    monkeypatch: pytest.MonkeyPatch,
    error: type[Exception],
    code: int,
) -> None:
    """It failed with a MarkupError on ``[/]``, the same text that killed the run."""

    def load_run(run_dir: Path) -> None:
        raise error(HOSTILE)

    monkeypatch.setattr("lemo_nade.reporting.data.load_run", load_run)
    out, err = consoles
    result = runner.invoke(app, ["show", str(hostile_run)])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    text = visible(output(err))
    assert text.startswith("failed: RuntimeError: " if code == 1 else "error: Traceback")
    assert_shown(text)
    assert output(out) == ""
