"""The run store's schema: numbered, append-only migrations.

``PRAGMA user_version`` records how many of :data:`MIGRATIONS` have run; opening a store
runs the missing ones (each store is brought up to date once, in one write transaction).
A store written by a newer lemo-nade is refused with a one-line error instead of being
misread. Never edit a migration that has shipped: append a new one.

Pure: no torch import.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lemo_nade.store.errors import StoreError

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
    # 4: whether the candidate followed each instruction that produced it: a JSON list of
    # [code, verdict, reason] (lemo_nade.compliance); NULL in iterations recorded before.
    """
    ALTER TABLE iterations ADD COLUMN compliance_json TEXT
    """,
    # 5: the epochs of a promotion (a best candidate trained again for longer after the
    # search: lemo_nade.promotion); NULL for the search's own candidates.
    """
    ALTER TABLE iterations ADD COLUMN epochs INTEGER
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Run the missing migrations, each statement inside one write transaction."""
    if user_version(conn, path) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")  # the write lock; re-read: another process may have won
    try:
        for number in range(user_version(conn, path), SCHEMA_VERSION):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def user_version(conn: sqlite3.Connection, path: Path) -> int:
    """How many migrations ``path`` has had (0: no lemo-nade schema); a StoreError when
    a newer lemo-nade wrote it."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this lemo-nade's "
            f"{SCHEMA_VERSION}; upgrade lemo-nade to read it"
        )
    return int(version)
