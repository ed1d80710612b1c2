"""The run store: round trips, append-only iterations, migrations, locking, crash safety."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lemo_nade.history import IterationRecord
from lemo_nade.records import Evaluation, Metrics, Status
from lemo_nade.store import RunStore, StoreError, candidate_path, new_run_id
from lemo_nade.store import migrations as migrations_mod
from lemo_nade.store.migrations import SCHEMA_VERSION
from lemo_nade.usage import Usage


def make_record(idx: int, ok: bool = True) -> IterationRecord:
    metrics = Metrics(
        A1=0.9,
        A2=0.8 + idx / 1000,
        E1=1e-5,
        E2=1e-8,
        F=12345.6,
        P=1000 + idx,
        train_loss=float("nan"),
        val_loss=0.25,
        val_images=144,
    )
    evaluation = (
        Evaluation(Status.OK, metrics, wall_time_s=1.5, log_tail="epoch 1\n")
        if ok
        else Evaluation(Status.FAILED_SHAPE, error="shape (2, 7) != (2, 10)", wall_time_s=0.2)
    )
    return IterationRecord(
        idx=idx,
        started_at=100.0 + idx,
        finished_at=101.5 + idx,
        parent_idx=idx - 1 if idx else None,
        architect="offline",
        prompt_instructions=(("ACL", 0.6), ("RD", 0.3)),
        code=f"# candidate {idx}\nclass Net: ...\n",
        state={"blocks": [{"channels": 16}], "idx": idx},
        notes="ACL: added a block",
        evaluation=evaluation,
        raw_instructions={"ACL": 0.6, "RD": 0.0} if ok else {},
        resolved_instructions=(("ACL", 0.6),) if ok else (),
        cm=2.5 + idx / 100 if ok else None,
        usage=Usage(calls=1, prompt_tokens=10, completion_tokens=20, total_tokens=30),
    )


def test_round_trip_keeps_everything_and_nan_comes_back_as_nan(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with RunStore.create(run_dir, '{"x": 1}', run_id="r1") as st:
        st.record_iteration(make_record(0))
        st.record_iteration(make_record(1, ok=False))
    with RunStore.open(run_dir) as st:
        assert st.run_id == "r1"
        assert st.config_json() == '{"x": 1}'
        got = st.iterations()
    assert [r.idx for r in got] == [0, 1]
    first, second = got
    want = make_record(0)
    assert first.evaluation.metrics is not None and want.evaluation.metrics is not None
    assert math.isnan(first.evaluation.metrics.train_loss)
    assert first.evaluation.metrics.val_loss == 0.25
    assert first.evaluation.metrics.P == 1000
    # fields that may be absent stay None (not NaN): a search candidate has no test pass
    assert first.evaluation.metrics.test_accuracy is None
    assert first.evaluation.metrics.candidate_kwh is None
    assert first.evaluation.metrics.spent_kwh == pytest.approx(1e-5 + 1e-8)
    assert first.prompt_instructions == want.prompt_instructions
    assert first.resolved_instructions == want.resolved_instructions
    assert first.raw_instructions == want.raw_instructions
    assert first.state == want.state and first.usage == want.usage and first.cm == want.cm
    assert first.code == want.code
    assert second.status is Status.FAILED_SHAPE and second.cm is None
    assert "shape" in second.evaluation.error and second.evaluation.metrics is None
    assert candidate_path(run_dir, 1).read_text() == make_record(1).code
    assert candidate_path(run_dir, 0).name == "000.py"


def test_nan_metrics_are_null_in_sql(tmp_path: Path) -> None:
    with RunStore.create(tmp_path / "r", "{}") as st:
        st.record_iteration(make_record(0))
    conn = sqlite3.connect(tmp_path / "r" / "run.sqlite")
    (metrics_json,) = conn.execute("SELECT metrics_json FROM iterations").fetchone()
    assert '"train_loss": null' in metrics_json and "NaN" not in metrics_json
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_duplicate_iteration_is_refused_and_the_first_kept(tmp_path: Path) -> None:
    with RunStore.create(tmp_path / "r", "{}") as st:
        st.record_iteration(make_record(0))
        with pytest.raises(StoreError, match="iteration 0 is already recorded"):
            st.record_iteration(make_record(0, ok=False))
        assert [r.status for r in st.iterations()] == [Status.OK]
        assert st.next_index() == 1


def test_status_and_events(tmp_path: Path) -> None:
    with RunStore.create(tmp_path / "r", "{}") as st:
        assert st.status() == ("created", "")
        st.set_status("stopped", "max_hours")
        st.add_event("resumed", {"at_iteration": 3})
        assert st.status() == ("stopped", "max_hours")
        kinds = [kind for _, kind, _ in st.events()]
    assert kinds == ["created", "status", "resumed"]


def test_one_writer_at_a_time_but_readers_are_free(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    RunStore.create(run_dir, "{}").close()
    with RunStore.open(run_dir, writer=True):
        with pytest.raises(StoreError, match="in use by another"):
            RunStore.open(run_dir, writer=True)
        with RunStore.open(run_dir) as reader:
            assert reader.iterations() == []
    RunStore.open(run_dir, writer=True).close()  # released on close


def test_bad_run_dirs_get_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a run directory"):
        RunStore.open(tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "run.sqlite").write_text("not a database at all" * 100)
    with pytest.raises(StoreError, match="not a readable run database"):
        RunStore.open(tmp_path / "junk")
    # an empty file or another program's database is refused and left byte for byte
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "run.sqlite").touch()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with sqlite3.connect(foreign / "run.sqlite") as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    for bad in (tmp_path / "empty", foreign):
        before = (bad / "run.sqlite").read_bytes()
        with pytest.raises(StoreError, match="holds no run"):
            RunStore.open(bad)
        assert (bad / "run.sqlite").read_bytes() == before
        assert sorted(p.name for p in bad.iterdir()) == ["run.sqlite"]
    RunStore.create(tmp_path / "r", "{}").close()
    with pytest.raises(StoreError, match="already holds a run"):
        RunStore.create(tmp_path / "r", "{}")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    RunStore.create(tmp_path / "r", "{}").close()
    conn = sqlite3.connect(tmp_path / "r" / "run.sqlite")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this lemo-nade"):
        RunStore.open(tmp_path / "r")


def test_a_new_migration_runs_once_on_an_old_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RunStore.create(tmp_path / "r", "{}") as st:
        st.record_iteration(make_record(0))
    extra = "ALTER TABLE iterations ADD COLUMN reviewer TEXT NOT NULL DEFAULT 'none';"
    monkeypatch.setattr(migrations_mod, "MIGRATIONS", (*migrations_mod.MIGRATIONS, extra))
    monkeypatch.setattr(migrations_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    for _ in range(2):  # the second open must not re-run it (ALTER would fail)
        with RunStore.open(tmp_path / "r") as st:
            assert len(st.iterations()) == 1
    conn = sqlite3.connect(tmp_path / "r" / "run.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert conn.execute("SELECT reviewer FROM iterations").fetchone()[0] == "none"


def test_run_ids_sort_by_time_and_differ() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i.split("-")) == 3 for i in ids)


def test_writes_are_fast(tmp_path: Path) -> None:
    """1000 committed iterations (each fsynced) in well under the time of one candidate."""
    start = time.perf_counter()
    with RunStore.create(tmp_path / "r", "{}") as st:
        for i in range(1000):
            st.record_iteration(make_record(i, ok=i % 3 != 0))
        assert len(st.iterations()) == 1000
    assert time.perf_counter() - start < 60


CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path[:0] = [{tests!r}]
    from test_store import make_record
    from lemo_nade.store import RunStore
    with RunStore.open({run_dir!r}, writer=True) as st:
        for i in range(1, 1000):
            st.record_iteration(make_record(i))
            if i == 40:
                os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_sigkill_loses_nothing_committed_and_releases_the_lock(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    with RunStore.create(run_dir, "{}") as st:
        st.record_iteration(make_record(0))
    code = CRASHER.format(tests=str(Path(__file__).parent), run_dir=str(run_dir))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with RunStore.open(run_dir, writer=True) as st:  # the kernel dropped the dead lock
        assert [r.idx for r in st.iterations()] == list(range(41))
        st.record_iteration(make_record(41))
    assert not list(run_dir.glob("candidates/.*.tmp"))
    assert os.path.exists(candidate_path(run_dir, 41))


def test_a_running_run_whose_process_died_reads_as_interrupted(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    RunStore.create(run_dir, "{}").close()
    writer = RunStore.open(run_dir, writer=True)
    writer.set_status("running")
    with RunStore.open(run_dir) as reader:  # the writer is alive: it is running
        assert reader.status() == ("running", "")
    assert writer.status() == ("running", "")
    writer.close()  # the lock goes, the status stays: as when the process is killed
    with RunStore.open(run_dir) as reader:
        status, reason = reader.status()
    assert status == "interrupted" and "resume" in reason
    with RunStore.open(run_dir, writer=True) as st:  # the probe left no lock behind
        assert st.status() == ("running", "")
