"""What `lemo-nade report` and `lemo-nade compare` show: the Pareto front, the lineage,
the retrain.json hook, the summary row (Eq. 2-3) and the compare table. The report
directory itself (atomic writing, bad input, the HTML in a browser) is in
test_report_write.py, which shares this file's hand-made runs."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from lemo_nade.cli import app
from lemo_nade.config import build_config
from lemo_nade.history import IterationRecord
from lemo_nade.records import Evaluation, Metrics, Status
from lemo_nade.reporting.data import (
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
from lemo_nade.store import RunStore
from lemo_nade.usage import Usage

runner = CliRunner()
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
        code=f"class Net:  # candidate {idx}\n    idx = {idx}\n",
        state=None,
        notes=f"made {idx}",
        evaluation=evaluation,
        cm=cm,
        usage=Usage(calls=1, total_tokens=50, cost_usd=0.01),
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


# -- the summary row ----------------------------------------------------------------------


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
