"""Writing a run's report directory, ``RUN_DIR/report/`` by default, replaced as a whole.

``write_report(run_dir)`` fills it with ``report.md``, ``report.html`` (both made by
:mod:`lemo_nade.reporting.render`), the plots as PNG and a marker naming what it wrote.
Everything is written into a temporary directory next to it and swapped in at the end,
so a failure leaves the previous report (or none), never half of one; the directory, not
each file, is the unit that is replaced atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from lemo_nade.reporting.data import ReportError, RunData, load_run, require_success
from lemo_nade.reporting.render import to_html, to_markdown

REPORT_DIR = "report"
MARKER_NAME = ".lemo-nade-report"  # a directory holding it may be replaced by a new report
MARKER_HEADER = "made by lemo-nade report; replaced as a whole; it wrote:\n"
MD_NAME = "report.md"
HTML_NAME = "report.html"


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
