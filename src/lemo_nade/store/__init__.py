"""The run store: one directory per run, ``run.sqlite`` plus ``candidates/NNN.py``.

Design (after optuna's RDB storage and MLflow's file store, made smaller):

- SQLite in WAL mode with ``synchronous=FULL``: an iteration committed is on disk, and
  a process killed at any point leaves the database consistent.
- Each iteration is one transaction: its code, status, error, metrics, raw and resolved
  instructions, CM, whether it followed the instructions that produced it, timings,
  the architect's state and token usage. The candidate's
  source is also written to ``candidates/NNN.py`` (atomically, before the commit) so it
  can be read, diffed and imported without the database.
- Schema changes are numbered, append-only migrations (:mod:`.migrations`); ``PRAGMA
  user_version`` records how many have run. A store written by a newer lemo-nade is
  refused with a one-line error instead of being misread.
- Each table's columns are declared once (:mod:`.codec`), for writing and reading.
  Non-finite floats (a NaN loss) are stored as JSON ``null`` and read back as NaN.
- One writer at a time: :meth:`RunStore.open` with ``writer=True`` takes an exclusive
  ``flock`` on ``run.lock`` (released by the kernel if the process dies), so two
  ``resume`` calls cannot interleave iterations. Readers (``show``) take no lock.

Pure: no torch import.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from lemo_nade import __version__
from lemo_nade.files import atomic_write
from lemo_nade.history import Attempt, IterationRecord
from lemo_nade.store import codec
from lemo_nade.store.codec import ATTEMPT_COLUMNS, CALL_COLUMNS, ITERATION_COLUMNS
from lemo_nade.store.errors import StoreError
from lemo_nade.store.migrations import migrate, user_version
from lemo_nade.usage import LLMCall

__all__ = [
    "CANDIDATES_DIR",
    "DB_NAME",
    "LOCK_NAME",
    "RunStore",
    "StoreError",
    "candidate_path",
    "new_run_id",
    "writer_lock_held",
]

DB_NAME = "run.sqlite"
LOCK_NAME = "run.lock"
CANDIDATES_DIR = "candidates"


def new_run_id() -> str:
    """Sortable and unique enough: ``20261125-103801-3f9a1c``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def candidate_path(run_dir: Path, idx: int) -> Path:
    return Path(run_dir) / CANDIDATES_DIR / f"{idx:03d}.py"


def artifact_path(run_dir: Path, idx: int) -> Path:
    """The measured model of candidate ``idx`` (a ``torch.export`` archive), if any."""
    return Path(run_dir) / CANDIDATES_DIR / f"{idx:03d}.pt2"


class RunStore:
    """A run directory opened for reading or writing. Use as a context manager."""

    def __init__(self, run_dir: Path, conn: sqlite3.Connection, run_id: str, lock_fd: int | None):
        self.run_dir = Path(run_dir)
        self._conn = conn
        self.run_id = run_id
        self._lock_fd = lock_fd

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, run_dir: Path, config_json: str, run_id: str | None = None) -> RunStore:
        """Make a new run directory (it must not hold a run yet) and open it for writing."""
        run_dir = Path(run_dir)
        if (run_dir / DB_NAME).exists():
            raise StoreError(f"{run_dir} already holds a run; use `lemo-nade resume {run_dir}`")
        try:
            (run_dir / CANDIDATES_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create run directory {run_dir}: {exc.strerror}") from None
        lock_fd = _lock(run_dir)
        run_id = run_id or run_dir.name
        try:
            # Built under a temporary name and renamed: a reader never sees a half-made run.
            tmp = run_dir / f".{DB_NAME}.tmp"
            tmp.unlink(missing_ok=True)
            conn = _connect(tmp)
            now = time.time()
            with conn:
                conn.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, now, now, __version__, config_json, "created", ""),
                )
                _insert_event(conn, run_id, "created", {"version": __version__})
            conn.close()  # checkpoints and removes the WAL, so the file is whole
            os.replace(tmp, run_dir / DB_NAME)
            conn = _connect(run_dir / DB_NAME)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(run_dir, conn, run_id, lock_fd)

    @classmethod
    def open(cls, run_dir: Path, writer: bool = False) -> RunStore:
        """Open an existing run; ``writer=True`` takes the run's lock (one writer at a time)."""
        run_dir = Path(run_dir)
        db = run_dir / DB_NAME
        if not db.is_file():
            raise StoreError(
                f"{run_dir} is not a run directory (no {DB_NAME}); "
                "pass a directory made by `lemo-nade run`"
            )
        lock_fd = _lock(run_dir) if writer else None
        try:
            conn = _connect(db, new=False)
            row = conn.execute("SELECT run_id FROM runs").fetchone()
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        if row is None:
            raise StoreError(f"{db} holds no run; it was not made by `lemo-nade run`")
        return cls(run_dir, conn, row[0], lock_fd)

    def close(self) -> None:
        self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- runs and events --------------------------------------------------------------------

    def config_json(self) -> str:
        return str(self._one("SELECT config_json FROM runs WHERE run_id = ?")[0])

    def set_config(self, config_json: str, changed: dict[str, Any]) -> None:
        """Replace the stored config (only the run's length and budgets may change: see
        ``runs.EXTENDABLE``), recording what changed as an event in the same transaction."""
        with self._conn:
            self._conn.execute(
                "UPDATE runs SET config_json = ?, updated_at = ? WHERE run_id = ?",
                (config_json, time.time(), self.run_id),
            )
            _insert_event(self._conn, self.run_id, "config_changed", changed)

    def status(self) -> tuple[str, str]:
        """``(status, reason)``; a run stored as running whose lock no process holds is
        ``interrupted``: its process was killed before it could say so."""
        status, reason = self._one("SELECT status, reason FROM runs WHERE run_id = ?")
        if status == "running" and self._lock_fd is None and not writer_lock_held(self.run_dir):
            return "interrupted", "its process was killed; resume continues it"
        return str(status), str(reason)

    def set_status(self, status: str, reason: str = "") -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE runs SET status = ?, reason = ?, updated_at = ? WHERE run_id = ?",
                (status, reason, time.time(), self.run_id),
            )
            _insert_event(self._conn, self.run_id, "status", {"status": status, "reason": reason})

    def add_event(self, kind: str, data: dict[str, Any] | None = None) -> None:
        with self._conn:
            _insert_event(self._conn, self.run_id, kind, data or {})

    def events(self) -> list[tuple[float, str, dict[str, Any]]]:
        rows = self._conn.execute(
            "SELECT at, kind, data_json FROM events WHERE run_id = ? ORDER BY id", (self.run_id,)
        ).fetchall()
        return [(at, kind, json.loads(data)) for at, kind, data in rows]

    # -- iterations ---------------------------------------------------------------------------

    def next_index(self) -> int:
        (count,) = self._one("SELECT COUNT(*) FROM iterations WHERE run_id = ?")
        return int(count)

    def record_iteration(self, rec: IterationRecord) -> None:
        """Commit one iteration: the candidate file first (atomic), then one transaction
        with its attempts and LLM calls."""
        atomic_write(candidate_path(self.run_dir, rec.idx), rec.code)
        if rec.evaluation.artifact:  # the graph that was measured: what retrain/export use
            atomic_write(artifact_path(self.run_dir, rec.idx), rec.evaluation.artifact)
        key = (self.run_id, rec.idx)
        try:
            with self._conn:
                self._conn.execute(
                    codec.insert_sql("iterations", ITERATION_COLUMNS, ["run_id"]),
                    (self.run_id, *codec.encode(ITERATION_COLUMNS, rec)),
                )
                self._conn.executemany(
                    codec.insert_sql("attempts", ATTEMPT_COLUMNS, ["run_id", "idx"]),
                    [(*key, *codec.encode(ATTEMPT_COLUMNS, a)) for a in rec.attempts],
                )
                self._conn.executemany(
                    codec.insert_sql("llm_calls", CALL_COLUMNS, ["run_id", "idx"]),
                    [(*key, *codec.encode(CALL_COLUMNS, c)) for c in rec.calls],
                )
                self._conn.execute(
                    "UPDATE runs SET updated_at = ? WHERE run_id = ?", (time.time(), self.run_id)
                )
        except sqlite3.IntegrityError:
            raise StoreError(
                f"iteration {rec.idx} is already recorded in {self.run_dir}; "
                "is another `lemo-nade` process writing to this run?"
            ) from None

    def iterations(self) -> list[IterationRecord]:
        """Every committed iteration in order, with its attempts and LLM calls."""
        attempts: dict[int, list[Attempt]] = {}
        for row in self._rows("attempts", ATTEMPT_COLUMNS, "idx, attempt"):
            attempts.setdefault(row["idx"], []).append(codec.decode_attempt(row))
        calls: dict[int, list[LLMCall]] = {}
        for call in self.llm_calls():
            calls.setdefault(call.iteration, []).append(call)
        return [
            replace(
                codec.decode_iteration(row),
                attempts=tuple(attempts.get(row["idx"], ())),
                calls=tuple(calls.get(row["idx"], ())),
            )
            for row in self._rows("iterations", ITERATION_COLUMNS, "idx")
        ]

    def llm_calls(self) -> list[LLMCall]:
        """Every recorded LLM call, in the order made."""
        return [codec.decode_call(row) for row in self._rows("llm_calls", CALL_COLUMNS, "id")]

    def _rows(
        self, table: str, columns: tuple[codec.Column[Any], ...], order: str
    ) -> list[dict[str, Any]]:
        sql = codec.select_sql(table, columns, order)
        return [codec.named(columns, row) for row in self._conn.execute(sql, (self.run_id,))]

    def _one(self, sql: str) -> tuple[Any, ...]:
        row = self._conn.execute(sql, (self.run_id,)).fetchone()
        assert row is not None
        return tuple(row)


# -- helpers -------------------------------------------------------------------------------


def _connect(path: Path, new: bool = True) -> sqlite3.Connection:
    """Open ``path`` and bring its schema up to date; with ``new=False`` a file that never
    got lemo-nade's schema (empty, or another program's database) is refused untouched."""
    try:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        if not new and user_version(conn, path) == 0:
            conn.close()
            raise StoreError(
                f"{path} holds no run; it was not made by `lemo-nade run` "
                "(or its creation was cut off): pass a run directory"
            )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn, path)
        conn.isolation_level = "DEFERRED"  # `with conn:` is one transaction from here on
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a readable run database ({exc})") from None
    return conn


def writer_lock_held(run_dir: Path) -> bool:
    """Whether some process holds the run's writer lock (a shared probe, released at once)."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a probe lock that was taken
    return False


def _lock(run_dir: Path) -> int:
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(
            f"{run_dir} is in use by another lemo-nade process; wait for it or stop it first"
        ) from None
    return fd


def _insert_event(conn: sqlite3.Connection, run_id: str, kind: str, data: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO events (run_id, at, kind, data_json) VALUES (?, ?, ?, ?)",
        (run_id, time.time(), kind, codec.dumps(data)),
    )
