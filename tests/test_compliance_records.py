"""Instruction following from the measuring child to the screen: the structure in the
child's result (checked field by field), the verdicts in the store (and old runs without
them), ``show`` (table, list, summary and --json), ``compare`` and the report."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from candidates import SMALL_CNN
from lemo_nade.cli import app
from lemo_nade.cli.console import print_compliance, print_summary, print_table
from lemo_nade.config import build_config
from lemo_nade.history import IterationRecord
from lemo_nade.records import Evaluation, Metrics, Status, Verdict
from lemo_nade.reporting.compare import compare_rows, rich_table, to_csv, to_json
from lemo_nade.reporting.data import load_run
from lemo_nade.reporting.render import to_markdown
from lemo_nade.sandbox import Sandbox
from lemo_nade.sandbox.outcome import ResultError, parse_result
from lemo_nade.store import RunStore
from sandboxes import job
from test_report import CHAIN, make_run

pytest_plugins = ["sandbox_fixtures"]

STRUCTURE = {
    "conv_layers": 3,
    "conv_ops": 4,
    "conv_channels": [16, 32, 32],
    "conv_channels_total": 80,
    "skip_connections": 1,
    "dense_layers": 2,
    "dense_units": [64, 10],
    "hidden_units": 64,
    "batch_norms": 3,
    "dropout_layers": 1,
    "dropout_rates": [0.25],
}
V1 = (
    Verdict("ACL", "followed", "conv layers 2 -> 3"),
    Verdict("AMK", "not_followed", "conv channels 16,32 -> 16,32,32"),
)
V3 = (
    Verdict("ASC", "followed", "skip connections 0 -> 1"),
    Verdict("AWI", "unknown", "no source facts for the parent"),
)


def checked(rec: IterationRecord, verdicts: tuple[Verdict, ...]) -> IterationRecord:
    ev = rec.evaluation
    assert ev.metrics is not None
    metrics = dataclasses.replace(ev.metrics, structure=STRUCTURE)
    return dataclasses.replace(
        rec, evaluation=dataclasses.replace(ev, metrics=metrics, compliance=verdicts)
    )


RECORDS = [CHAIN[0], checked(CHAIN[1], V1), CHAIN[2], checked(CHAIN[3], V3), CHAIN[4]]


def result(**structure: object) -> str:
    metrics = Metrics(A1=0.5, A2=0.5, E1=0.0, E2=0.0, F=1.0, P=1).to_dict()
    return json.dumps({"status": "ok", "metrics": {**metrics, "structure": structure}})


def test_the_childs_structure_is_checked_field_by_field() -> None:
    evaluation = parse_result(result(**STRUCTURE))
    assert evaluation.metrics is not None and evaluation.metrics.structure == STRUCTURE
    assert parse_result(result()).metrics.structure == {}  # type: ignore[union-attr]
    for bad in (
        {"conv_layres": 1},  # an unknown key
        {"conv_layers": -1},
        {"conv_layers": 1.5},
        {"skip_connections": True},
        {"conv_channels": "16,32"},
        {"conv_channels": [16, "32"]},
        {"dense_units": [10, -1]},
        {"dropout_rates": [0.5, 1.5]},
        {"dropout_rates": [float("nan")]},
        {"dense_units": list(range(10_001))},
    ):
        with pytest.raises(ResultError, match=r"metrics\.structure"):
            parse_result(result(**bad))
    with pytest.raises(ResultError, match="not an object"):
        parse_result(json.dumps({"status": "ok", "metrics": {"structure": [1]}}))


def test_structure_and_verdicts_round_trip_through_the_store(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", RECORDS)
    with RunStore.open(run) as store:
        back = store.iterations()
    assert [r.evaluation.compliance for r in back] == [(), V1, (), V3, ()]
    assert back[1].evaluation.metrics.structure == STRUCTURE  # type: ignore[union-attr]
    assert [r.evaluation.metrics.structure for r in back if r.evaluation.metrics] == [
        {}, STRUCTURE, STRUCTURE, {},
    ]  # fmt: skip
    conn = sqlite3.connect(run / "run.sqlite")
    rows = conn.execute("SELECT idx, compliance_json FROM iterations ORDER BY idx").fetchall()
    conn.close()
    assert rows[0] == (0, None)  # nothing to check: NULL, as in runs from before
    assert json.loads(rows[1][1]) == [list(v) for v in V1]


def test_show_lists_each_candidates_verdicts_and_the_run_rate(tmp_path: Path) -> None:
    console = Console(record=True, width=250, color_system=None)
    print_table(console, RECORDS)
    row1 = next(x for x in console.export_text().splitlines() if x.startswith("│   1 │"))
    assert re.search(r"│ 1 of 2 +│ ACL AMK +│$", row1)
    print_compliance(console, RECORDS)
    print_summary(console, RECORDS, build_config({}), "finished", "iterations")
    text = console.export_text()
    assert "   1  1 of 2:  ACL ✓  AMK ✗ (conv channels 16,32 -> 16,32,32)" in text
    assert "   3  1 of 2, 1 unknown:  ASC ✓  AWI ? (no source facts for the parent)" in text
    assert "instructions followed: 2 of 3 decided (67%), 1 unknown, over 2 candidates" in text

    run = make_run(tmp_path / "run", RECORDS)
    shown = CliRunner().invoke(app, ["show", str(run), "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.output)
    assert doc["iterations"][1]["instructions_followed"] == "1 of 2"
    assert doc["iterations"][1]["compliance"][1] == V1[1]._asdict()
    assert (
        doc["iterations"][0]["compliance"] == []
        and doc["iterations"][0]["instructions_followed"] is None
    )
    summary = doc["summary"]
    assert (summary["instructions_followed"], summary["instructions_not_followed"]) == (2, 1)
    assert summary["instructions_unknown"] == 1 and summary["instruction_follow_rate"] == 2 / 3
    assert summary["instructions_by_code"]["AMK"] == {
        "followed": 0, "not_followed": 1, "unknown": 0, "rate": 0.0,
    }  # fmt: skip


def test_compare_and_the_report_show_instruction_following(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", RECORDS)
    old = make_run(tmp_path / "old", CHAIN)  # nothing checked: a run from before
    rows = compare_rows([run, old])
    console = Console(record=True, width=250, color_system=None)
    console.print(rich_table(rows))
    lines = console.export_text().splitlines()
    assert next(x for x in lines if x.startswith("│ run ")).endswith("│ 2 of 3 (67%) +1? │")
    old_row = next(x for x in lines if x.startswith("│ old "))
    assert re.search(r"\$0\.0500 │ +— │$", old_row)
    doc = json.loads(to_json(rows))
    assert doc["rows"][0]["instruction_follow_rate"] == pytest.approx(2 / 3)
    assert doc["rows"][1]["instruction_follow_rate"] is None
    assert "instructions_not_followed" in to_csv(rows).splitlines()[0]

    md = to_markdown(load_run(run), [])
    assert "## Instruction following" in md
    assert "| AMK | Add more kernel | 0 | 1 | 0 | 0% |" in md
    assert "| 1 of 2: ACL followed: conv layers 2 -\\> 3; AMK not followed: conv channels" in md
    assert "Instructions followed: 2 of 3 decided (67%), 1 unknown, over 2 candidates" in md
    assert "## Instruction following" not in to_markdown(load_run(old), [])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's children")
def test_the_measuring_child_hands_back_the_graphs_structure(box: Sandbox) -> None:
    evaluation = box.evaluate(job(SMALL_CNN), timeout_s=120)
    assert evaluation.status is Status.OK, evaluation.error + evaluation.log_tail
    assert evaluation.metrics is not None
    assert evaluation.metrics.structure == {
        "conv_layers": 1, "conv_ops": 1, "conv_channels": [8], "conv_channels_total": 8,
        "skip_connections": 0, "dense_layers": 1, "dense_units": [10], "hidden_units": 0,
        "batch_norms": 0, "dropout_layers": 0, "dropout_rates": [],
    }  # fmt: skip
    assert evaluation.compliance == ()  # the loop judges, never the child


def test_a_failed_evaluation_gets_no_verdicts() -> None:
    from lemo_nade.compliance import check
    from lemo_nade.records import ProposalRequest, TaskSpec

    request = ProposalRequest(
        iteration=1,
        task=TaskSpec("digits", (1, 8, 8), 10),
        parent_code=SMALL_CNN,
        parent_metrics=None,
        instructions=(("ACL", 1.0),),
    )
    assert check(request, SMALL_CNN, Evaluation(Status.FAILED_TRAIN, error="x")) == ()
    ok = Evaluation(Status.OK, Metrics(A1=0.5, A2=0.5, E1=0.0, E2=0.0, F=1.0, P=1))
    assert [v.verdict for v in check(request, SMALL_CNN, ok)] == ["unknown"]
    first = dataclasses.replace(request, parent_code=None, instructions=())
    assert check(first, SMALL_CNN, ok) == ()
