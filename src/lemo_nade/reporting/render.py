"""A run's report as Markdown and as one self-contained HTML page, written atomically.

``write_report(run_dir)`` fills ``RUN_DIR/report/`` with ``report.md`` (images linked
by relative path), ``report.html`` (the same content with the images base64-embedded,
no external reference; a Content-Security-Policy forbids any) and the plots as PNG.
Everything is written into a temporary directory next to it and swapped in at the
end, so a failure leaves the previous report (or none), never half of one.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lemo_nade import __version__
from lemo_nade.reporting.data import (
    NOT_MEASURED,
    RETRAIN_NAME,
    ReportError,
    RunData,
    instructions_text,
    lineage_rows,
    lineage_tree,
    load_run,
    paper_row,
    pareto_iterations,
    require_success,
)
from lemo_nade.search import best_of

REPORT_DIR = "report"
MARKER_NAME = ".lemo-nade-report"  # a directory holding it may be replaced by a new report
MARKER_HEADER = "made by lemo-nade report; replaced as a whole; it wrote:\n"
MD_NAME = "report.md"
HTML_NAME = "report.html"

# Sets data-images-ok on <body> once every image has decoded: the headless-browser check
# (bench/render_report.py) reads it from the dumped DOM.
IMAGE_CHECK_JS = (
    'window.addEventListener("load",function(){'
    "var a=Array.prototype.slice.call(document.images);"
    "var n=a.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;"
    'document.body.setAttribute("data-images-loaded",n+"/"+a.length);'
    'document.body.setAttribute("data-images-ok",String(n===a.length));});'
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.6rem 0}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right;vertical-align:top}
td{white-space:nowrap}td.text{white-space:normal}td.wide{min-width:22rem}
.scroll{overflow-x:auto}
th{background:#f3f5f7}td.text,th.text{text-align:left}
tr.best td{background:#fff6dc;font-weight:600}tr.failed td{color:#a33}
.meta{color:#555;font-size:.9rem}.note{color:#555;font-size:.85rem}
.estimate{color:#b35900;font-weight:600}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
pre{background:#f6f8fa;padding:.8rem;overflow-x:auto;font-size:.8rem;line-height:1.3}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1rem}
"""


# -- formatting ----------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt(value: Any, spec: str = "") -> str:
    """``—`` for a missing or non-finite value, else ``format(value, spec)``."""
    if _missing(value):
        return "—"
    return format(value, spec)


def pct(value: Any) -> str:
    return "—" if _missing(value) else f"{100 * value:.2f}%"


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
        pct(p["test_accuracy"]) if p["test_accuracy"] is not None else NOT_MEASURED,
        pct(p["validation_accuracy"]),
        fmt(p["params"], ","),
        fmt(p["hours"], ".4f"),
        fmt(p["kwh_pue"], ".4f" if (p["kwh_pue"] or 0) >= 1e-3 else ".3E"),
        fmt(p["co2_lbs"], ".4f" if (p["co2_lbs"] or 0) >= 1e-3 else ".3E"),
        fmt(p["fps"], ",.2f"),
        fmt(p["inference_kwh_pue_per_image"], ".2E"),
        fmt(p["inference_co2_lbs_per_image"], ".2E"),
        p["energy_source"] or "—",
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
                pct(row["A1"]),
                pct(row["A2"]),
                fmt(row["P"], ","),
                fmt(mflops, ".3f"),
                fmt(row["F"], ",.0f"),
                fmt(row["E1_kwh"], ".2e"),
                fmt(row["E2_kwh"], ".2e"),
                row["energy_source"] or "—",
                fmt(row["CM"], ".3f"),
                instructions_text(rec),
                " ".join(row["instructions_out"]) or "—",
                clip((row["error"] or row["notes"] or "").replace("\n", " "), 200),
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
        parent = "—" if row["parent"] is None else f"#{row['parent']}"
        what = "; ".join(row["described"]) or (
            "initial model" if row["parent"] is None else "no instruction (explore)"
        )
        rows.append((f"#{row['child']}", parent, what, row["status"], fmt(row["cm"], ".3f")))
    return Table(("child", "← parent", "instructions", "status", "CM"), rows, frozenset({2, 3}))


def _meta(data: RunData) -> list[tuple[str, str]]:
    c = data.config
    pri = ", ".join(f"{k} {v:g}" for k, v in c.priorities.model_dump().items())
    setting = f"setting {c.setting}" if c.setting else "custom priorities"
    started = min((r.started_at for r in data.records), default=None)
    s = data.summary
    cost = s["llm_cost_usd"]
    statuses = ", ".join(f"{n} {k}" for k, n in sorted(s["statuses"].items()))
    return [
        ("run", f"{data.run_id} ({data.run_dir})"),
        ("status", f"{data.status}" + (f" ({data.reason})" if data.reason else "")),
        ("dataset", c.dataset),
        ("architect", c.llm),
        ("priorities", f"{setting}: {pri}"),
        ("budget", f"{c.iterations} iterations × {c.epochs} epochs, batch {c.batch_size}"),
        (
            "started",
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)) if started else "—",
        ),
        ("candidates", f"{s['iterations']} ({statuses})"),
        (
            "LLM",
            f"{s['llm_calls']} calls, {s['llm_tokens']:,} tokens, "
            + (f"${cost:.4f}" if cost is not None else "cost unknown")
            + f"; invalid answers {fmt(s['attempt_invalid_rate'], '.0%')} of "
            f"{s['attempts']} attempts",
        ),
    ]


def _notes(data: RunData) -> list[str]:
    s, p = data.summary, paper_row(data)
    notes = [
        f"Energy is device energy × PUE {s['pue']:g} (Eq. 2); CO2 = kWh-PUE × "
        f"{s['co2_lbs_per_kwh']:g} lbs/kWh (Eq. 3). The LLM's own energy is not counted."
    ]
    if p["energy_estimated"]:
        notes.append(
            "Energy figures are ESTIMATES, not sensor readings"
            + (f": {s['energy_note']}" if s.get("energy_note") else ".")
        )
    if p["includes_retrain"]:
        notes.append(
            f"Test accuracy, and the retraining's time and energy, come from {RETRAIN_NAME} "
            f"(candidate #{p['retrained_iteration']} retrained)."
        )
    else:
        notes.append(
            f"Test accuracy is {NOT_MEASURED}: hours and energy are the search's alone; "
            "FPS and inference energy are the best candidate's, measured during the search."
        )
    notes.append(
        "★ best by CM (Eq. 1); ◆ on the Pareto front (max validation accuracy, min parameters)."
    )
    return notes


def _model_code(data: RunData) -> tuple[int, str, str]:
    """The best candidate's index, and the heading and code of the model the summary row
    describes: the retrained candidate where there is one, else the best."""
    best = best_of(data.records)
    assert best is not None  # require_success ran
    idx = paper_row(data)["model_iteration"]
    rec = next((r for r in data.records if r.idx == idx), best)
    if rec.idx == best.idx:
        return best.idx, f"Best model: candidate #{best.idx}", best.code
    return best.idx, f"Retrained model: candidate #{rec.idx} (best by CM: #{best.idx})", rec.code


# -- Markdown ------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(t: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in t.headers) + " |"]
    lines.append(
        "|" + "".join(":---|" if i in t.text_cols else "---:|" for i in range(len(t.headers)))
    )
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _fence(text: str, lang: str = "") -> str:
    """A code fence longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def to_markdown(data: RunData, plots: list[tuple[str, str]]) -> str:
    best_idx, heading, code = _model_code(data)
    parts = [f"# LeMo-NADe run {data.run_id}", ""]
    parts += [f"- **{k}**: {_md_cell(v)}" for k, v in _meta(data)]
    parts += ["", "## Summary (paper Tables 3/5/6)", "", md_table(summary_table(data)), ""]
    parts += [f"- {n}" for n in _notes(data)]
    parts += ["", "## Plots", ""]
    for name, caption in plots:
        parts += [f"### {caption}", "", f"![{caption}]({name})", ""]
    parts += ["## Iterations", "", md_table(iterations_table(data)), ""]
    parts += ["## Lineage", "", _fence(lineage_tree(data.records, best_idx), "text"), ""]
    parts += [md_table(lineage_table(data)), ""]
    parts += [f"## {heading}", "", _fence(code, "python"), ""]
    parts += [f"_Generated by lemo-nade {__version__} (`lemo-nade report {data.run_dir}`)._", ""]
    return "\n".join(parts)


# -- HTML ----------------------------------------------------------------------------------

_esc = html.escape


def html_table(t: Table) -> str:
    def cell(tag: str, i: int, text: str) -> str:
        names = " ".join(
            n for n, cols in (("text", t.text_cols), ("wide", t.wide_cols)) if i in cols
        )
        cls = f' class="{names}"' if names else ""
        return f"<{tag}{cls}>{_esc(text)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(t.headers))
    body = []
    for n, row in enumerate(t.rows):
        cls = t.row_classes[n] if n < len(t.row_classes) else ""
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def to_html(data: RunData, plots: list[tuple[str, str]], image_dir: Path) -> str:
    best_idx, heading, code = _model_code(data)
    script_hash = base64.b64encode(hashlib.sha256(IMAGE_CHECK_JS.encode()).digest()).decode()
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{script_hash}'"
    )
    meta = "".join(
        f"<tr><th class=text>{_esc(k)}</th><td class=text>{_esc(v)}</td></tr>"
        for k, v in _meta(data)
    )
    notes = "".join(
        f'<li class="{"estimate" if "ESTIMATE" in n else ""}">{_esc(n)}</li>' for n in _notes(data)
    )
    figures = "".join(_img(image_dir / name, caption) for name, caption in plots)
    config = json.dumps(data.config.model_dump(), indent=2)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="lemo-nade {_esc(__version__)}">
<title>LeMo-NADe run {_esc(data.run_id)}</title>
<style>{CSS}</style>
<script>{IMAGE_CHECK_JS}</script>
</head>
<body>
<h1>LeMo-NADe run {_esc(data.run_id)}</h1>
<table class="meta">{meta}</table>
<h2>Summary (paper Tables 3/5/6)</h2>
{html_table(summary_table(data))}
<ul class="note">{notes}</ul>
<h2>Plots</h2>
<div class="grid">{figures}</div>
<h2>Iterations</h2>
{html_table(iterations_table(data))}
<h2>Lineage</h2>
<pre>{_esc(lineage_tree(data.records, best_idx))}</pre>
{html_table(lineage_table(data))}
<h2>{_esc(heading)}</h2>
<pre><code>{_esc(code)}</code></pre>
<details><summary>Run configuration</summary><pre>{_esc(config)}</pre></details>
<p class="note">Generated by lemo-nade {_esc(__version__)}.</p>
</body>
</html>
"""


# -- writing -------------------------------------------------------------------------------


def write_report(
    run_dir: Path,
    out_dir: Path | None = None,
    draw: Callable[[RunData, Path], list[tuple[str, str]]] | None = None,
) -> list[Path]:
    """Write the report into ``out_dir`` (default ``RUN_DIR/report``) and return the files.

    Raises :class:`~lemo_nade.store.StoreError` for a missing run directory and
    :class:`~lemo_nade.reporting.data.ReportError` for a run with no good candidate or an
    unusable ``retrain.json``, before anything is written.
    """
    data = load_run(run_dir)
    require_success(data)
    if draw is None:
        from lemo_nade.reporting.plots import draw_all  # matplotlib only when drawing

        draw = draw_all
    out_dir = (Path(out_dir) if out_dir is not None else Path(run_dir) / REPORT_DIR).resolve()
    _check_replaceable(out_dir, Path(run_dir).resolve())
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {out_dir.parent}: {exc.strerror}") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        plots = draw(data, tmp)
        (tmp / MD_NAME).write_text(to_markdown(data, plots), encoding="utf-8")
        (tmp / HTML_NAME).write_text(to_html(data, plots, tmp), encoding="utf-8")
        written = sorted(f.name for f in tmp.iterdir())
        (tmp / MARKER_NAME).write_text(MARKER_HEADER + "".join(f"{n}\n" for n in written))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(f for f in out_dir.iterdir() if f.name != MARKER_NAME)


def _check_replaceable(out_dir: Path, run_dir: Path) -> None:
    """The report directory is replaced as a whole, so it must be one: new, empty, or made
    by ``report`` (its marker, or only report files); never the run or a folder above it."""
    if out_dir == run_dir or out_dir in run_dir.parents:
        raise ReportError(
            f"{out_dir} holds the run itself and would be replaced; pass a new --out-dir"
        )
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ReportError(f"{out_dir} exists and is not a directory; pass another --out-dir")
    names = {entry.name for entry in out_dir.iterdir()} - {MARKER_NAME}
    ours = _written_by_report(out_dir / MARKER_NAME)
    foreign = sorted(n for n in names if n not in ours) if ours is not None else []
    if ours is None and not all(n in (MD_NAME, HTML_NAME) or n.endswith(".png") for n in names):
        raise ReportError(
            f"{out_dir} is not empty and was not made by `lemo-nade report` (it would be "
            "replaced as a whole); pass a new or empty --out-dir"
        )
    if foreign:
        raise ReportError(
            f"{out_dir} holds {foreign[0]}, which `lemo-nade report` did not write and would "
            "delete with the old report; move it out, or pass another --out-dir"
        )


def _written_by_report(marker: Path) -> set[str] | None:
    """The files the report in ``marker``'s directory wrote; None without a marker."""
    try:
        lines = marker.read_text().splitlines()
    except OSError:
        return None
    if lines[:1] != [MARKER_HEADER.strip()]:  # an older marker: report files and plots
        return {MD_NAME, HTML_NAME} | {n for n in os.listdir(marker.parent) if n.endswith(".png")}
    return set(lines[1:])


def _swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` by the directory ``new``: the old report stays whole until the
    new one is complete, and is removed only after the rename."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
