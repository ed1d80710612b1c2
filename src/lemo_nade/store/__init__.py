"""The run store: one directory per run, ``run.sqlite`` plus ``candidates/NNN.py``.

Design (after optuna's RDB storage and MLflow's file store, made smaller):

- SQLite in WAL mode with ``synchronous=FULL``: an iteration committed is on disk, and
  a process killed at any point leaves the database consistent.
- Each iteration is one transaction: its code, status, error, metrics, raw and resolved
  instructions, CM, timings, the architect's state and token usage. The candidate's
  source is also written to ``candidates/NNN.py`` (atomically, before the commit) so it
  can be read, diffed and imported without the database.
- Schema changes are numbered, append-only :data:`MIGRATIONS`; ``PRAGMA user_version``
  records how many have run. A store written by a newer lemo-nade is refused with a
  one-line error instead of being misread.
- Non-finite floats (a NaN loss) are stored as JSON ``null`` and read back as NaN.
- One writer at a time: :meth:`RunStore.open` with ``writer=True`` takes an exclusive
  ``flock`` on ``run.lock`` (released by the kernel if the process dies), so two
  ``resume`` calls cannot interleave iterations. Readers (``show``) take no lock.

Pure: no torch import.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from lemo_nade import __version__
from lemo_nade.records import Evaluation, Metrics, Status

DB_NAME = "run.sqlite"
LOCK_NAME = "run.lock"
CANDIDATES_DIR = "candidates"

# Statements are split on ";": keep semicolons out of string literals and triggers.
MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema.
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        lemo_nade_version TEXT NOT NULL,
        config_json TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE iterations (
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        idx INTEGER NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        parent_idx INTEGER,
        architect TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT NOT NULL,
        wall_time_s REAL NOT NULL,
        log_tail TEXT NOT NULL,
        a1 REAL, a2 REAL, e1 REAL, e2 REAL, fps REAL, params INTEGER,
        metrics_json TEXT,
        cm REAL,
        code TEXT NOT NULL,
        state_json TEXT,
        notes TEXT NOT NULL,
        prompt_instructions_json TEXT NOT NULL,
        raw_instructions_json TEXT NOT NULL,
        resolved_instructions_json TEXT NOT NULL,
        usage_json TEXT NOT NULL,
        PRIMARY KEY (run_id, idx)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        data_json TEXT NOT NULL
    );
    """,
    # 2: repair attempts inside an iteration, and every LLM call (for replay).
    """
    CREATE TABLE attempts (
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        idx INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        error TEXT NOT NULL,
        code TEXT NOT NULL,
        notes TEXT NOT NULL,
        usage_json TEXT NOT NULL,
        wall_time_s REAL NOT NULL,
        PRIMARY KEY (run_id, idx, attempt)
    );
    CREATE TABLE llm_calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        idx INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        call_json TEXT NOT NULL
    );
    """,
    # 3: the energy a failed candidate's child measured before it failed.
    """
    ALTER TABLE iterations ADD COLUMN failure_kwh REAL
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
ITERATION_COLUMNS = (
    "run_id, idx, started_at, finished_at, parent_idx, architect, status, error, wall_time_s,"
    " log_tail, a1, a2, e1, e2, fps, params, metrics_json, cm, code, state_json, notes,"
    " prompt_instructions_json, raw_instructions_json, resolved_instructions_json,"
    " usage_json, failure_kwh"
)


class StoreError(Exception):
    """A run directory that cannot be used as asked; the message names the fix."""


@dataclass(frozen=True)
class IterationRecord:
    """One committed iteration of Algorithm 1: what was asked, proposed, measured and derived."""

    idx: int
    started_at: float
    finished_at: float
    parent_idx: int | None
    architect: str
    prompt_instructions: tuple[tuple[str, float], ...]
    code: str
    state: dict[str, Any] | None
    notes: str
    evaluation: Evaluation
    raw_instructions: dict[str, float] = field(default_factory=dict)
    resolved_instructions: tuple[tuple[str, float], ...] = ()
    cm: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)  # summed over the attempts
    # Every attempt of this iteration, the last one being the record itself: dicts with
    # attempt, status, error, code, notes, usage, wall_time_s.
    attempts: tuple[dict[str, Any], ...] = ()
    calls: tuple[dict[str, Any], ...] = ()  # the LLM exchanges, for replay

    @property
    def status(self) -> Status:
        return self.evaluation.status


def new_run_id() -> str:
    """Sortable and unique enough: ``20261125-103801-3f9a1c``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def candidate_path(run_dir: Path, idx: int) -> Path:
    return Path(run_dir) / CANDIDATES_DIR / f"{idx:03d}.py"


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
        ``search.EXTENDABLE``), recording what changed as an event in the same transaction."""
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
        if status == "running" and self._lock_fd is None and not _held(self.run_dir):
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
        """Commit one iteration: the candidate file first (atomic), then one transaction."""
        atomic_write(candidate_path(self.run_dir, rec.idx), rec.code)
        ev = rec.evaluation
        m = ev.metrics
        row = (
            self.run_id,
            rec.idx,
            rec.started_at,
            rec.finished_at,
            rec.parent_idx,
            rec.architect,
            ev.status.value,
            ev.error,
            ev.wall_time_s,
            ev.log_tail,
            _finite(m.A1) if m else None,
            _finite(m.A2) if m else None,
            _finite(m.E1) if m else None,
            _finite(m.E2) if m else None,
            _finite(m.F) if m else None,
            m.P if m else None,
            _dumps(m.to_dict()) if m else None,
            _finite(rec.cm),
            rec.code,
            _dumps(rec.state) if rec.state is not None else None,
            rec.notes,
            _dumps(rec.prompt_instructions),
            _dumps(rec.raw_instructions),
            _dumps(rec.resolved_instructions),
            _dumps(rec.usage),
            _finite(ev.failure_kwh),
        )
        try:
            with self._conn:
                self._conn.execute(
                    f"INSERT INTO iterations ({ITERATION_COLUMNS}) "
                    f"VALUES ({', '.join('?' * len(row))})",
                    row,
                )
                self._conn.executemany(
                    "INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            self.run_id,
                            rec.idx,
                            a["attempt"],
                            a["status"],
                            a.get("error", ""),
                            a.get("code", ""),
                            a.get("notes", ""),
                            _dumps(a.get("usage", {})),
                            float(a.get("wall_time_s", 0.0)),
                        )
                        for a in rec.attempts
                    ],
                )
                self._conn.executemany(
                    "INSERT INTO llm_calls (run_id, idx, attempt, call_json) VALUES (?, ?, ?, ?)",
                    [(self.run_id, rec.idx, c["attempt"], _dumps(c)) for c in rec.calls],
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
        rows = self._conn.execute(
            "SELECT idx, started_at, finished_at, parent_idx, architect, status, error,"
            " wall_time_s, log_tail, metrics_json, cm, code, state_json, notes,"
            " prompt_instructions_json, raw_instructions_json, resolved_instructions_json,"
            " usage_json, failure_kwh FROM iterations WHERE run_id = ? ORDER BY idx",
            (self.run_id,),
        ).fetchall()
        attempts: dict[int, list[dict[str, Any]]] = {}
        for idx, attempt, status, error, code, notes, usage, wall in self._conn.execute(
            "SELECT idx, attempt, status, error, code, notes, usage_json, wall_time_s"
            " FROM attempts WHERE run_id = ? ORDER BY idx, attempt",
            (self.run_id,),
        ):
            attempts.setdefault(idx, []).append(
                {
                    "attempt": attempt,
                    "status": status,
                    "error": error,
                    "code": code,
                    "notes": notes,
                    "usage": json.loads(usage),
                    "wall_time_s": wall,
                }
            )
        calls: dict[int, list[dict[str, Any]]] = {}
        for call in self.llm_calls():
            calls.setdefault(call["iteration"], []).append(call)
        return [
            replace(
                _record(row),
                attempts=tuple(attempts.get(row[0], ())),
                calls=tuple(calls.get(row[0], ())),
            )
            for row in rows
        ]

    def llm_calls(self) -> list[dict[str, Any]]:
        """Every recorded LLM call, in order; each has ``iteration`` and ``attempt``."""
        rows = self._conn.execute(
            "SELECT idx, attempt, call_json FROM llm_calls WHERE run_id = ? ORDER BY id",
            (self.run_id,),
        ).fetchall()
        return [{**json.loads(text), "iteration": idx, "attempt": a} for idx, a, text in rows]

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
        if not new and _user_version(conn, path) == 0:
            conn.close()
            raise StoreError(
                f"{path} holds no run; it was not made by `lemo-nade run` "
                "(or its creation was cut off): pass a run directory"
            )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        _migrate(conn, path)
        conn.isolation_level = "DEFERRED"  # `with conn:` is one transaction from here on
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a readable run database ({exc})") from None
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Run the missing migrations, each statement inside one write transaction."""
    if _user_version(conn, path) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")  # the write lock; re-read: another process may have won
    try:
        for number in range(_user_version(conn, path), SCHEMA_VERSION):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _user_version(conn: sqlite3.Connection, path: Path) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this lemo-nade's "
            f"{SCHEMA_VERSION}; upgrade lemo-nade to read it"
        )
    return int(version)


def _held(run_dir: Path) -> bool:
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
        (run_id, time.time(), kind, _dumps(data)),
    )


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_jsonable(value), allow_nan=False, sort_keys=True)


def _metrics_dict(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    data: dict[str, Any] = json.loads(text)
    return {k: (math.nan if v is None and k not in _MAYBE_ABSENT else v) for k, v in data.items()}


# JSON null is a non-finite float (stored as null) except where the field may be absent
_MAYBE_ABSENT = frozenset(f.name for f in fields(Metrics) if f.default is None)


def _record(row: tuple[Any, ...]) -> IterationRecord:
    (
        idx,
        started_at,
        finished_at,
        parent_idx,
        architect,
        status,
        error,
        wall_time_s,
        log_tail,
        metrics_json,
        cm,
        code,
        state_json,
        notes,
        prompt_json,
        raw_json,
        resolved_json,
        usage_json,
        failure_kwh,
    ) = row
    evaluation = Evaluation.from_dict(
        {
            "status": status,
            "metrics": _metrics_dict(metrics_json),
            "error": error,
            "wall_time_s": wall_time_s,
            "log_tail": log_tail,
            "failure_kwh": failure_kwh,
        }
    )
    return IterationRecord(
        idx=idx,
        started_at=started_at,
        finished_at=finished_at,
        parent_idx=parent_idx,
        architect=architect,
        prompt_instructions=tuple((str(n), float(v)) for n, v in json.loads(prompt_json)),
        code=code,
        state=json.loads(state_json) if state_json is not None else None,
        notes=notes,
        evaluation=evaluation,
        raw_instructions={str(k): float(v) for k, v in json.loads(raw_json).items()},
        resolved_instructions=tuple((str(n), float(v)) for n, v in json.loads(resolved_json)),
        cm=cm,
        usage=json.loads(usage_json),
    )
