"""Old run directories still open: stores written by earlier schemas and by the store
code before its columns were declared once read back the same (and migrate in place)."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import replace
from pathlib import Path

from lemo_nade.records import Metrics, Status
from lemo_nade.store import RunStore
from lemo_nade.usage import Usage
from test_store import make_record


def test_a_store_from_before_failure_energy_gains_it_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    with RunStore.create(tmp_path / "r", "{}") as st:
        st.record_iteration(make_record(0))
    conn = sqlite3.connect(tmp_path / "r" / "run.sqlite")  # back to what schema 2 wrote
    conn.execute("ALTER TABLE iterations DROP COLUMN failure_kwh")
    conn.execute("ALTER TABLE iterations DROP COLUMN compliance_json")
    conn.execute("ALTER TABLE iterations DROP COLUMN epochs")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with RunStore.open(tmp_path / "r", writer=True) as st:  # migrations 3 to 5 run
        (first,) = st.iterations()
        assert first.evaluation.failure_kwh is None and first.idx == 0
        assert first.epochs is None and not first.promoted  # schema 5: a search candidate
        failed = make_record(1, ok=False)
        st.record_iteration(
            replace(failed, evaluation=replace(failed.evaluation, failure_kwh=2.5e-6))
        )
    with RunStore.open(tmp_path / "r") as st:
        assert st.iterations()[1].evaluation.failure_kwh == 2.5e-6
        assert st.iterations()[1].evaluation.spent_kwh == 2.5e-6


# -- a run directory written by lemo-nade before the store was split (schema v3) ---------

# The three migrations as they shipped, copied here so the test does not trust the code.
V3_STATEMENTS = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        lemo_nade_version TEXT NOT NULL, config_json TEXT NOT NULL, status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE iterations (
        run_id TEXT NOT NULL REFERENCES runs(run_id), idx INTEGER NOT NULL,
        started_at REAL NOT NULL, finished_at REAL NOT NULL, parent_idx INTEGER,
        architect TEXT NOT NULL, status TEXT NOT NULL, error TEXT NOT NULL,
        wall_time_s REAL NOT NULL, log_tail TEXT NOT NULL,
        a1 REAL, a2 REAL, e1 REAL, e2 REAL, fps REAL, params INTEGER, metrics_json TEXT,
        cm REAL, code TEXT NOT NULL, state_json TEXT, notes TEXT NOT NULL,
        prompt_instructions_json TEXT NOT NULL, raw_instructions_json TEXT NOT NULL,
        resolved_instructions_json TEXT NOT NULL, usage_json TEXT NOT NULL,
        PRIMARY KEY (run_id, idx))""",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(run_id),
        at REAL NOT NULL, kind TEXT NOT NULL, data_json TEXT NOT NULL)""",
    """CREATE TABLE attempts (
        run_id TEXT NOT NULL REFERENCES runs(run_id), idx INTEGER NOT NULL,
        attempt INTEGER NOT NULL, status TEXT NOT NULL, error TEXT NOT NULL,
        code TEXT NOT NULL, notes TEXT NOT NULL, usage_json TEXT NOT NULL,
        wall_time_s REAL NOT NULL, PRIMARY KEY (run_id, idx, attempt))""",
    """CREATE TABLE llm_calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(run_id),
        idx INTEGER NOT NULL, attempt INTEGER NOT NULL, call_json TEXT NOT NULL)""",
    "ALTER TABLE iterations ADD COLUMN failure_kwh REAL",
)
CALL_USAGE = {  # one LLM call, as llm.py recorded it
    "calls": 1,
    "completion_tokens": 150,
    "cost_usd": 0.0,
    "latency_s": 1.5,
    "prompt_tokens": 500,
    "total_tokens": 650,
    "usage_reported": True,
}
REPLAYED_USAGE = {**CALL_USAGE, "cost_usd": None, "latency_s": 0.0, "replayed": True}
SUMMED_USAGE = {  # an iteration's: the sum over its attempts, without the per-call keys
    "calls": 2,
    "completion_tokens": 300,
    "cost_usd": 0.0,
    "latency_s": 3.0,
    "prompt_tokens": 1000,
    "total_tokens": 1300,
}
LEGACY_METRICS = Metrics(A1=0.9, A2=0.85, E1=1e-5, E2=1e-8, F=1234.5, P=4321, val_images=144)


def old_json(value: object) -> str:
    """The old store's JSON: non-finite floats as null, keys sorted (stdlib only)."""

    def clean(v: object) -> object:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False, sort_keys=True)


def call_json(idx: int, attempt: int, usage: dict[str, object], **extra: object) -> str:
    return old_json(
        {
            "architect": "ollama:m",
            "at": 1000.0 + idx,
            "attempt": attempt,
            "base_url": "http://localhost:11434/v1",
            "error": None,
            "iteration": idx,
            "request": {"messages": [{"content": "go", "role": "user"}], "model": "m", "seed": 0},
            "response": {"finish_reason": "stop", "text": f"```python\n# {idx}\n```"},
            "usage": usage,
            **extra,
        }
    )


def write_legacy_run(run_dir: Path) -> None:
    """Three iterations as the old code wrote them: an LLM one repaired once, a replayed
    one that failed after measuring energy, and an offline one from before attempts."""
    (run_dir / "candidates").mkdir(parents=True)
    conn = sqlite3.connect(run_dir / "run.sqlite")
    for statement in V3_STATEMENTS:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.execute(
        "INSERT INTO runs VALUES ('old', 1.0, 2.0, '0.1.0', '{}', 'stopped', 'max_tokens')"
    )
    m = LEGACY_METRICS
    iterations = [
        (0, None, "ok", "", m, 2.5, None, SUMMED_USAGE, None),
        (1, 0, "failed_train", "RuntimeError: x", None, None, {"blocks": [1]}, {}, 2.5e-6),
        (2, 0, "ok", "", m, 2.25, None, {}, None),
    ]
    for idx, parent, status, error, metrics, cm, state, usage, failure_kwh in iterations:
        conn.execute(
            "INSERT INTO iterations VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "old", idx, 100.0 * idx, 100.0 * idx + 60.5, parent, "ollama:m", status,
                error, 12.5, "epoch 1\n",
                *((m.A1, m.A2, m.E1, m.E2, m.F, m.P) if metrics else (None,) * 6),
                old_json(m.to_dict()) if metrics else None,
                cm, f"# candidate {idx}\n", old_json(state) if state else None, "notes",
                old_json([["ACL", 0.6]] if idx else []),
                old_json({"ACL": 0.6, "RD": 0.0} if metrics else {}),
                old_json([["ACL", 0.6]] if metrics else []),
                old_json(usage), failure_kwh,
            ),
        )  # fmt: skip
    attempts = [
        (0, 0, "failed_shape", "shape", CALL_USAGE),
        (0, 1, "ok", "", {**CALL_USAGE, "latency_s": 1.5}),
        (1, 0, "failed_train", "RuntimeError: x", REPLAYED_USAGE),
    ]
    for idx, attempt, status, error, usage in attempts:
        conn.execute(
            "INSERT INTO attempts VALUES ('old', ?, ?, ?, ?, ?, '', ?, 1.25)",
            (idx, attempt, status, error, f"# candidate {idx}\n", old_json(usage)),
        )
        extra = {"prompt_matches": False, "replayed_from": "ollama:m"} if idx == 1 else {}
        conn.execute(
            "INSERT INTO llm_calls (run_id, idx, attempt, call_json) VALUES ('old', ?, ?, ?)",
            (idx, attempt, call_json(idx, attempt, usage, **extra)),
        )
    conn.commit()
    conn.close()


def table_rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(db)
    try:
        return {
            "iterations": conn.execute("SELECT * FROM iterations ORDER BY idx").fetchall(),
            "attempts": conn.execute("SELECT * FROM attempts ORDER BY idx, attempt").fetchall(),
            "llm_calls": conn.execute(
                "SELECT run_id, idx, attempt, call_json FROM llm_calls ORDER BY id"
            ).fetchall(),
            "schema": [
                (table, *column)
                for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                for column in conn.execute(f"PRAGMA table_info({table})")
            ],
        }
    finally:
        conn.close()


def test_a_run_written_by_the_old_store_reads_the_same_and_writes_back_byte_for_byte(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old"
    write_legacy_run(old)
    with RunStore.open(old) as st:
        assert st.status() == ("stopped", "max_tokens")
        records = st.iterations()
        calls = st.llm_calls()
    first, second, third = records
    assert first.usage == Usage(**SUMMED_USAGE)
    assert [a.status for a in first.attempts] == [Status.FAILED_SHAPE, Status.OK]
    assert first.attempts[0].usage == Usage(**CALL_USAGE)
    assert first.evaluation.metrics is not None
    assert first.evaluation.metrics.to_dict().keys() == LEGACY_METRICS.to_dict().keys()
    assert math.isnan(first.evaluation.metrics.train_loss)
    assert first.evaluation.metrics.P == 4321 and first.evaluation.metrics.test_accuracy is None
    assert first.resolved_instructions == (("ACL", 0.6),) and first.cm == 2.5
    assert second.usage is None and second.state == {"blocks": [1]}
    assert second.evaluation.failure_kwh == 2.5e-6 and second.evaluation.metrics is None
    (replayed,) = second.attempts
    assert replayed.usage is not None and replayed.usage.replayed is True
    assert replayed.usage.cost_usd is None and replayed.wall_time_s == 1.25
    assert second.calls[0].payload["replayed_from"] == "ollama:m"
    assert third.usage is None and third.attempts == () and third.calls == ()
    assert [(c.iteration, c.attempt) for c in calls] == [(0, 0), (0, 1), (1, 0)]
    assert calls[0].request["model"] == "m" and calls[0].error is None
    # written again by this code, every row and column holds the same bytes
    new = tmp_path / "new"
    with RunStore.create(new, "{}", run_id="old") as st:
        for rec in records:
            st.record_iteration(rec)
    assert table_rows(new / "run.sqlite") == table_rows(old / "run.sqlite")
    with RunStore.open(new) as st:
        assert [c.to_dict() for c in st.llm_calls()] == [c.to_dict() for c in calls]
