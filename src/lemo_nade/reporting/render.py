"""A run's report as text: Markdown (images linked by relative path) and one
self-contained HTML page (the same content with the images base64-embedded, no external
reference; a Content-Security-Policy forbids any). Nothing here writes a file:
:mod:`lemo_nade.reporting.write` puts the pages and plots on disk.

Every text goes out escaped for its format, a candidate's error or an LLM's notes and
code included: HTML through ``html.escape``, Markdown cells and inline text through
:func:`lemo_nade.text.md_cell`, code fences as :func:`lemo_nade.text.plain` text.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import time
from pathlib import Path

from lemo_nade import __version__
from lemo_nade.history import best_of
from lemo_nade.numbers import MISSING, fmt
from lemo_nade.reporting.data import NOT_MEASURED, RETRAIN_NAME, RunData, lineage_tree, paper_row
from lemo_nade.reporting.tables import (
    Table,
    clip,
    following_table,
    iterations_table,
    lineage_table,
    summary_table,
)
from lemo_nade.text import md_cell, plain

__all__ = ["clip", "html_table", "md_table", "to_html", "to_markdown"]

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
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)) if started else MISSING,
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
    if s["instructions_checked"]:
        notes.append(
            f"Instructions followed: {s['instructions_followed']} of "
            f"{s['instructions_followed'] + s['instructions_not_followed']} decided "
            f"({fmt(s['instruction_follow_rate'], '.0%')}), {s['instructions_unknown']} "
            f"unknown, over {s['candidates_checked']} candidates (the parent and the child "
            "compared: their measured graphs and their code)."
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


def md_table(t: Table) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in t.headers) + " |"]
    lines.append(
        "|" + "".join(":---|" if i in t.text_cols else "---:|" for i in range(len(t.headers)))
    )
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _fence(text: str, lang: str = "") -> str:
    """A code fence longer than any backtick run inside ``text`` (control characters
    shown as escapes: the fence is read in terminals and editors too)."""
    text = plain(text)
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def to_markdown(data: RunData, plots: list[tuple[str, str]]) -> str:
    best_idx, heading, code = _model_code(data)
    parts = [f"# LeMo-NADe run {md_cell(data.run_id)}", ""]
    parts += [f"- **{k}**: {md_cell(v)}" for k, v in _meta(data)]
    parts += ["", "## Summary (paper Tables 3/5/6)", "", md_table(summary_table(data)), ""]
    parts += [f"- {md_cell(n)}" for n in _notes(data)]
    parts += ["", "## Plots", ""]
    for name, caption in plots:
        parts += [f"### {caption}", "", f"![{caption}]({name})", ""]
    parts += ["## Iterations", "", md_table(iterations_table(data)), ""]
    if data.summary["instructions_checked"]:
        parts += ["## Instruction following", "", md_table(following_table(data)), ""]
    parts += ["## Lineage", "", _fence(lineage_tree(data.records, best_idx), "text"), ""]
    parts += [md_table(lineage_table(data)), ""]
    parts += [f"## {heading}", "", _fence(code, "python"), ""]
    command = plain(f"lemo-nade report {data.run_dir}").replace("`", "'")
    parts += [f"_Generated by lemo-nade {__version__} (`{command}`)._", ""]
    return "\n".join(parts)


# -- HTML ----------------------------------------------------------------------------------


def _esc(text: str) -> str:
    """Text for HTML content or a quoted attribute: never markup, no control characters."""
    return html.escape(plain(text))


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
    following = ""
    if data.summary["instructions_checked"]:
        following = f"<h2>Instruction following</h2>\n{html_table(following_table(data))}\n"
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
{following}<h2>Lineage</h2>
<pre>{_esc(lineage_tree(data.records, best_idx))}</pre>
{html_table(lineage_table(data))}
<h2>{_esc(heading)}</h2>
<pre><code>{_esc(code)}</code></pre>
<details><summary>Run configuration</summary><pre>{_esc(config)}</pre></details>
<p class="note">Generated by lemo-nade {_esc(__version__)}.</p>
</body>
</html>
"""
