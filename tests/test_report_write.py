"""`lemo-nade report`'s directory: a self-contained page, replaced as a whole (a failure
keeps the old report), never over a folder it did not make, bad input refused before
anything is written, and the HTML checked in a real browser. The hand-made runs come
from test_report.py."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from lemo_nade.cli import app
from lemo_nade.reporting.data import NOT_MEASURED, ReportError, RunData
from lemo_nade.reporting.write import write_report
from test_report import CHAIN, fake_draw, make_run, record

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


# -- the report ----------------------------------------------------------------------------


def test_report_command_writes_a_self_contained_page(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", CHAIN)
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    report = run / "report"
    names = sorted(p.name for p in report.iterdir())
    plots = ["cm_accuracy.png", "pareto.png", "energy.png", "instructions.png", "lineage.png"]
    assert names == sorted([".lemo-nade-report", "report.md", "report.html", *plots])
    for png in report.glob("*.png"):
        assert png.read_bytes().startswith(PNG)
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temp left

    page = (report / "report.html").read_text()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert len(refs) == 5 and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "http://" not in page and "https://" not in page
    assert "default-src 'none'" in page  # the CSP: an external reference could not load
    assert NOT_MEASURED in page

    md = (report / "report.md").read_text()
    assert f"| {NOT_MEASURED} | 90.00% | 20,000 |" in md
    assert "(search only)" in md and "(estimate)" in md
    assert "![Instruction frequency](instructions.png)" in md
    assert "├─ #2 failed_shape  <- #1 via ASC" in md
    assert "| #3 | #1 | Add skip connection (ASC, priority 0.6) | — | ok | 1.800 |" in md
    assert "## Best model: candidate #3" in md and "class Net:  # candidate 3" in md
    # ★ best, ◆ on the Pareto front: #0, #1, #3 (#4 is bigger and less accurate than #3)
    assert re.search(r"^\| ★ ◆ 3 \| 1 \| ok \|", md, re.M)
    assert re.search(r"^\| ◆ 0 \|", md, re.M) and re.search(r"^\| 4 \| 3 \|", md, re.M)


def test_report_shows_the_retrain_and_replaces_the_old_report_whole(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", CHAIN)
    write_report(run, draw=fake_draw)
    # a file the user put there is not deleted with the old report
    (run / "report" / "notes.md").write_text("mine")
    with pytest.raises(ReportError, match=r"holds notes\.md, which `lemo-nade report` did not"):
        write_report(run, draw=fake_draw)
    (run / "report" / "notes.md").unlink()
    # a plot an earlier report wrote (listed in its marker) goes with it
    marker = run / "report" / ".lemo-nade-report"
    marker.write_text(marker.read_text() + "c.png\n")
    (run / "report" / "c.png").write_bytes(b"old plot")
    (run / "retrain.json").write_text(json.dumps({"test_accuracy": 0.9123, "hours": 2.0}))
    written = write_report(run, draw=fake_draw)
    assert sorted(p.name for p in written) == ["a.png", "b.png", "report.html", "report.md"]
    md = (run / "report" / "report.md").read_text()
    assert "| 91.23% | 90.00% |" in md and NOT_MEASURED not in md
    assert "(search only)" not in md and "candidate #3 retrained" in md
    left = sorted(p.name for p in run.iterdir())
    assert left == ["candidates", "report", "retrain.json", "run.lock", "run.sqlite"]


def test_a_failure_while_writing_keeps_the_old_report(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", CHAIN)
    write_report(run, draw=fake_draw)
    before = (run / "report" / "report.md").read_text()

    def broken(data: RunData, out_dir: Path) -> list[tuple[str, str]]:
        (out_dir / "half.png").write_bytes(b"\x89PN")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_report(run, draw=broken)
    assert (run / "report" / "report.md").read_text() == before
    assert not (run / "report" / "half.png").exists()
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_out_dir_never_replaces_the_run_or_a_folder_it_did_not_make(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs" / "run", CHAIN)
    before = sorted(p.name for p in run.iterdir())
    for target in (run, run.parent, tmp_path, Path(".")):
        refused = runner.invoke(app, ["report", str(run), "--out-dir", str(target)])
        assert refused.exit_code == 2, (target, refused.output)
        assert len(refused.output.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == before  # the run is intact
    mine = tmp_path / "precious"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    refused = runner.invoke(app, ["report", str(run), "--out-dir", str(mine)])
    assert refused.exit_code == 2 and "not made by `lemo-nade report`" in refused.output
    assert (mine / "notes.txt").read_text() == "x"
    # a new folder, then the same folder again (the report's own) are fine
    fresh = tmp_path / "out"
    assert [p.name for p in write_report(run, fresh, draw=fake_draw)][-1] == "report.md"
    assert len(write_report(run, fresh, draw=fake_draw)) == 4


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    failed = make_run(tmp_path / "failed", [record(0, None, None), record(1, None, None)])
    result = runner.invoke(app, ["report", str(failed)])
    assert result.exit_code == 2
    assert "has no successful candidate (2 failed_shape)" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert sorted(p.name for p in failed.iterdir()) == ["candidates", "run.lock", "run.sqlite"]

    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "is not a run directory" in missing.output
    assert not (tmp_path / "nope").exists()

    good = make_run(tmp_path / "good", CHAIN)
    write_report(good, draw=fake_draw)
    before = (good / "report" / "report.md").read_text()
    (good / "retrain.json").write_text("{oops")
    bad = runner.invoke(app, ["report", str(good)])
    assert bad.exit_code == 2 and "retrain.json: not valid JSON" in bad.output
    assert (good / "report" / "report.md").read_text() == before


# -- in a real browser ---------------------------------------------------------------------


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "render_report.py"
    spec = importlib.util.spec_from_file_location("render_report", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    bench = _bench()
    binary = bench.find_chromium()
    if binary is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    run = make_run(tmp_path / "run", CHAIN)
    write_report(run)  # the real plots
    html_path = run / "report" / "report.html"
    assert bench.check_images(binary, html_path) == {"ok": True, "loaded": 5, "total": 5}

    # The check can fail: a corrupt image is reported as not loaded.
    page = html_path.read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    assert bench.check_images(binary, broken) == {"ok": False, "loaded": 4, "total": 5}

    png = bench.screenshot(binary, html_path, tmp_path / "shot.png", 1280, 2000)
    assert png.read_bytes().startswith(PNG)
