"""`lemo-nade report` and `lemo-nade compare`: the Pareto front, the lineage, the
retrain.json hook, atomic writing, bad input, and the HTML in a real browser."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from lemo_nade.cli import app
from lemo_nade.config import build_config
from lemo_nade.records import Evaluation, Metrics, Status
from lemo_nade.reporting.data import (
    NOT_MEASURED,
    ReportError,
    RunData,
    lineage_tree,
    load_retrain,
    load_run,
    paper_row,
    pareto_front,
)
from lemo_nade.reporting.rows import run_summary
from lemo_nade.reporting.write import write_report
from lemo_nade.store import IterationRecord, RunStore

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
# A 1x1 PNG, for the tests that do not need real plots (fast).
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def record(
    idx: int,
    parent: int | None,
    acc: float | None,
    params: int = 1000,
    instructions: tuple[tuple[str, float], ...] = (),
    source: str = "estimate",
) -> IterationRecord:
    """One iteration; ``acc`` None makes a failed candidate."""
    if acc is None:
        evaluation = Evaluation(Status.FAILED_SHAPE, error="shape (2, 7) != (2, 10)")
        cm = None
    else:
        metrics = Metrics(
            A1=acc + 0.01,
            A2=acc,
            E1=1e-5 * (idx + 1),
            E2=1e-8,
            F=1000.0 * (idx + 1),
            P=params,
            val_images=100,
            energy_source=source,
        )
        evaluation = Evaluation(Status.OK, metrics, wall_time_s=1.0)
        cm = acc * 2
    return IterationRecord(
        idx=idx,
        started_at=1000.0 + 10 * idx,
        finished_at=1000.0 + 10 * idx + 9,
        parent_idx=parent,
        architect="offline",
        prompt_instructions=instructions,
        code=f"class Net:  # candidate {idx}\n    pass\n",
        state=None,
        notes=f"made {idx}",
        evaluation=evaluation,
        cm=cm,
        usage={"calls": 1, "total_tokens": 50, "cost_usd": 0.01},
    )


# 0 -> 1 -> {2 failed, 3 -> 4}: the best is #3 (highest accuracy, so highest CM).
CHAIN = [
    record(0, None, 0.70, params=1000),
    record(1, 0, 0.80, params=5000, instructions=(("ACL", 1.0), ("AMK", 0.6))),
    record(2, 1, None, instructions=(("ASC", 0.6),)),
    record(3, 1, 0.90, params=20000, instructions=(("ASC", 0.6),)),
    record(4, 3, 0.85, params=30000, instructions=(("RK", 0.4),)),
]


def make_run(path: Path, records: list[IterationRecord], **config: Any) -> Path:
    cfg = build_config({"iterations": len(records), "epochs": 1, **config})
    with RunStore.create(path, cfg.model_dump_json(), run_id=path.name) as store:
        for rec in records:
            store.record_iteration(rec)
        store.set_status("finished", "iterations")
    return path


def fake_draw(data: RunData, out_dir: Path) -> list[tuple[str, str]]:
    (out_dir / "a.png").write_bytes(TINY_PNG)
    (out_dir / "b.png").write_bytes(TINY_PNG)
    return [("a.png", "plot A"), ("b.png", "plot B")]


# -- Pareto front --------------------------------------------------------------------------


def test_pareto_front_on_hand_made_points() -> None:
    points = [
        (0.90, 100.0),  # 0: front
        (0.80, 50.0),  # 1: front (smallest)
        (0.85, 200.0),  # 2: dominated by 0
        (0.70, 50.0),  # 3: dominated by 1 (same size, less accurate)
        (0.95, 1000.0),  # 4: front (most accurate)
        (math.nan, 10.0),  # 5: never on the front
        (0.90, 100.0),  # 6: equal to 0, kept
        (0.90, 150.0),  # 7: dominated by 0 (same accuracy, bigger)
    ]
    assert pareto_front(points) == [1, 0, 6, 4]
    assert pareto_front([]) == []
    assert pareto_front([(0.5, 10.0)]) == [0]


finite = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@given(st.lists(st.tuples(st.sampled_from([0.1, 0.5, 0.9]) | finite, finite), max_size=25))
def test_pareto_front_matches_the_definition(points: list[tuple[float, float]]) -> None:
    def dominated(i: int) -> bool:
        a, p = points[i]
        return any(
            b >= a and q <= p and (b > a or q < p) for j, (b, q) in enumerate(points) if j != i
        )

    assert sorted(pareto_front(points)) == [i for i in range(len(points)) if not dominated(i)]


# -- lineage -------------------------------------------------------------------------------


def test_lineage_tree_keeps_the_chain_in_one_column_and_hangs_failures_off_it() -> None:
    tree = lineage_tree(CHAIN, best_idx=3)
    assert tree.splitlines() == [
        "#0 ok CM 1.400  (initial)",
        "#1 ok CM 1.600  <- #0 via ACL AMK",
        "├─ #2 failed_shape  <- #1 via ASC",
        "#3 ok CM 1.800 ★ best  <- #1 via ASC",
        "#4 ok CM 1.700  <- #3 via RK",
    ]


def test_lineage_tree_branches_when_two_children_have_descendants() -> None:
    recs = [
        record(0, None, 0.5),
        record(1, 0, 0.6),
        record(2, 0, 0.7),
        record(3, 1, 0.6),
        record(4, 2, 0.7),
    ]
    assert lineage_tree(recs).splitlines() == [
        "#0 ok CM 1.000  (initial)",
        "├─ #1 ok CM 1.200  <- #0 via (none: explore)",
        "│  #3 ok CM 1.200  <- #1 via (none: explore)",
        "└─ #2 ok CM 1.400  <- #0 via (none: explore)",
        "   #4 ok CM 1.400  <- #2 via (none: explore)",
    ]


# -- retrain.json --------------------------------------------------------------------------


def test_retrain_json_is_optional_checked_and_feeds_the_paper_row(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", CHAIN)
    assert load_retrain(run) is None
    before = paper_row(load_run(run))
    assert before["test_accuracy"] is None and not before["includes_retrain"]
    assert before["params"] == 20000 and before["best_iteration"] == 3
    assert before["hours"] == pytest.approx(5 * 9 / 3600)

    (run / "retrain.json").write_text(
        json.dumps({"test_accuracy": 0.9123, "hours": 2.0, "kwh_pue": 0.5, "fps": 123.0, "x": 1})
    )
    after = paper_row(load_run(run))
    assert after["test_accuracy"] == 0.9123 and after["includes_retrain"]
    assert after["hours"] == pytest.approx(before["hours"] + 2.0)
    assert after["kwh_pue"] == pytest.approx(before["kwh_pue"] + 0.5)
    assert after["co2_lbs"] == pytest.approx(before["co2_lbs"] + 0.5 * 0.954)
    assert after["fps"] == 123.0 and after["retrained_iteration"] == 3

    # a retrained candidate that is not the best by CM: the whole row is that candidate's
    (run / "retrain.json").write_text(json.dumps({"test_accuracy": 0.8, "iteration": 1}))
    other = paper_row(load_run(run))
    assert (other["model_iteration"], other["best_iteration"]) == (1, 3)
    assert other["validation_accuracy"] == 0.80 and other["params"] == 5000
    assert other["fps"] == 2000.0
    write_report(run, tmp_path / "rep", draw=fake_draw)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Retrained model: candidate #1 (best by CM: #3)" in md
    assert "class Net:  # candidate 1" in md

    for bad, why in [
        ("{not json", "not valid JSON"),
        ("[1]", "expected a JSON object"),
        ('{"hours": 1}', "test_accuracy is missing"),
        ('{"test_accuracy": 91.2}', "fraction"),
        ('{"test_accuracy": 0.9, "fps": "fast"}', "fps = 'fast'"),
        ('{"test_accuracy": 0.9, "iteration": 1.5}', "iteration = 1.5"),
    ]:
        (run / "retrain.json").write_text(bad)
        with pytest.raises(ReportError, match=why):
            load_retrain(run)


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
    assert "| #3 | #1 | Add skip connection (ASC, priority 0.6) | ok | 1.800 |" in md
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


def test_energy_plot_names_its_source() -> None:
    pytest.importorskip("matplotlib")
    from lemo_nade.reporting.plots import fig_energy

    def title(source: str) -> str:
        recs = [record(0, None, 0.5, source=source), record(1, 0, None)]
        data = RunData(Path("r"), "r", "finished", "", build_config({}), recs, None)
        fig = fig_energy(data)
        return str(fig.axes[0].get_title())

    assert title("estimate") == "energy per candidate — source: estimate (ESTIMATE)"
    assert title("rapl") == "energy per candidate — source: rapl (measured)"


# -- compare -------------------------------------------------------------------------------


def test_compare_prints_one_row_per_run_as_table_json_and_csv(tmp_path: Path) -> None:
    a = make_run(tmp_path / "run-a", CHAIN, setting=3)
    b = make_run(tmp_path / "run-b", [record(0, None, None)])
    (a / "retrain.json").write_text(json.dumps({"test_accuracy": 0.88}))

    js = runner.invoke(app, ["compare", str(a), str(b), "--json"])
    assert js.exit_code == 0, js.output
    rows = json.loads(js.stdout)["rows"]
    assert [r["run_id"] for r in rows] == ["run-a", "run-b"]
    assert rows[0]["setting"] == 3 and rows[0]["val_accuracy"] == 0.9
    assert rows[0]["test_accuracy"] == 0.88 and rows[0]["params"] == 20000
    assert rows[0]["iterations"] == 5 and rows[0]["llm_cost_usd"] == pytest.approx(0.05)
    assert rows[1]["val_accuracy"] is None and rows[1]["iterations"] == 1

    csv_out = runner.invoke(app, ["compare", str(a), str(b), "--csv"])
    lines = csv_out.stdout.splitlines()
    assert lines[0].startswith("run_id,run_dir,dataset,llm,setting,status,iterations")
    assert len(lines) == 3 and lines[1].startswith("run-a,")

    table = runner.invoke(app, ["compare", str(a), str(b)], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert "run-a" in table.stdout and "90.00%" in table.stdout and "88.00%" in table.stdout

    both = runner.invoke(app, ["compare", str(a), "--json", "--csv"])
    assert both.exit_code == 2 and "choose one" in both.output
    missing = runner.invoke(app, ["compare", str(a), str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "is not a run directory" in missing.output


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


def test_run_summary_applies_pue_and_carbon_intensity_by_hand() -> None:
    """Eq. 2-3 on the paper row: kWh-PUE = PUE x device kWh, CO2 = intensity x kWh-PUE.
    Candidates 0, 1, 3, 4 succeeded: E1 = 1e-5 x (idx + 1), E2 = 1e-8 each."""
    cfg = build_config({"pue": 1.2, "co2_lbs_per_kwh": 0.5})
    row = run_summary(CHAIN, cfg)
    device_kwh = 1e-5 * (1 + 2 + 4 + 5) + 4 * 1e-8
    assert row["search_energy_kwh"] == pytest.approx(device_kwh)
    assert row["search_kwh_pue"] == pytest.approx(1.2 * device_kwh)
    assert row["search_co2_lbs"] == pytest.approx(0.5 * 1.2 * device_kwh)
    assert row["search_hours"] == pytest.approx(5 * 9 / 3600)
    # the best (#3) evaluated 100 validation images with E2 = 1e-8 kWh
    assert row["best_iteration"] == 3
    assert row["inference_kwh_pue_per_image"] == pytest.approx(1.2 * 1e-8 / 100)
    assert row["inference_co2_lbs_per_image"] == pytest.approx(0.5 * 1.2 * 1e-8 / 100)
    assert row["energy_estimated"] is True and row["energy_source"] == "estimate"
    # a candidate whose child measured its whole span counts that, not just E1 + E2
    m = CHAIN[0].evaluation.metrics
    assert m is not None
    whole = dataclasses.replace(m, candidate_kwh=m.E1 + m.E2 + 3e-5)
    measured = dataclasses.replace(
        CHAIN[0], evaluation=dataclasses.replace(CHAIN[0].evaluation, metrics=whole)
    )
    row2 = run_summary([measured, *CHAIN[1:]], cfg)
    assert row2["search_energy_kwh"] == pytest.approx(device_kwh + 3e-5)
    # and a failed candidate adds what its child measured before it failed
    failed = dataclasses.replace(
        CHAIN[2], evaluation=dataclasses.replace(CHAIN[2].evaluation, failure_kwh=4e-6)
    )
    row3 = run_summary([*CHAIN[:2], failed, *CHAIN[3:]], cfg)
    assert row3["search_energy_kwh"] == pytest.approx(device_kwh + 4e-6)


def test_long_notes_are_cut_at_a_word_with_an_ellipsis() -> None:
    from lemo_nade.reporting.render import clip

    text = "AMK: channels 16 -> 24; AR: weight decay 0 -> 0.0001"
    assert clip(text, 100) == text
    assert clip(text, 48) == "AMK: channels 16 -> 24; AR: weight decay 0 ->…"
    assert len(clip(text, 48)) <= 48 and clip("x" * 10, 5) == "xxxx…"
