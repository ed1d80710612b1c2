"""Reading a run store that a search may be writing, without ever getting in its way.

:meth:`lemo_nade.store.RunStore.open` may write (it sets WAL mode and runs missing
migrations), so the dashboard opens ``run.sqlite`` through a ``mode=ro`` URI instead and
hands that connection to :class:`~lemo_nade.store.RunStore`, whose read methods it then
reuses. A read-only reader of a WAL database takes no lock a writer waits on; all reads
of one load happen in one transaction, so a load sees a single committed state (never an
iteration without its attempts).

Idle polling is cheap: :class:`RunSource` keeps the last load and re-reads the store only
when its fingerprint (size and mtime of the database and its WAL, and whether a process
holds the writer lock) changed. Every commit grows or rewrites the WAL, so a committed
iteration always changes the fingerprint.

Pure: no torch import.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from lemo_nade.config import ConfigError
from lemo_nade.reporting.data import RETRAIN_NAME, RunData, from_store, load_retrain
from lemo_nade.store import DB_NAME, RunStore, StoreError, writer_lock_held
from lemo_nade.store.migrations import SCHEMA_VERSION, user_version


def connect_readonly(db: Path) -> sqlite3.Connection:
    """``db`` opened read-only (``mode=ro``): this process can never write to it."""
    uri = "file:" + quote(str(db.resolve())) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
        version = user_version(conn, db)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{db} is not a readable run database ({exc})") from None
    if version == 0:
        conn.close()
        raise StoreError(f"{db} holds no run; it was not made by `lemo-nade run`")
    if version < SCHEMA_VERSION:
        conn.close()
        raise StoreError(
            f"{db} was written by an older lemo-nade; run `lemo-nade show "
            f"{db.parent}` once to upgrade it, then reload"
        )
    return conn


def load_readonly(run_dir: Path) -> RunData:
    """The run at ``run_dir`` as :func:`lemo_nade.reporting.data.load_run` gives it, read
    in one read-only transaction."""
    db = Path(run_dir) / DB_NAME
    if not db.is_file():
        raise StoreError(f"{run_dir} is not a run directory (no {DB_NAME})")
    conn = connect_readonly(db)
    try:
        conn.execute("BEGIN")  # one snapshot for every read below
        row = conn.execute("SELECT run_id FROM runs").fetchone()
        if row is None:
            raise StoreError(f"{db} holds no run; it was not made by `lemo-nade run`")
        data = from_store(RunStore(Path(run_dir), conn, row[0], lock_fd=None), _retrain(run_dir))
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{db}: cannot read it ({exc})") from None
    finally:
        conn.close()
    return data


def _retrain(run_dir: Path) -> dict[str, object] | None:
    """The retrain hook, or None when its file is unusable (a page still shows the run)."""
    try:
        return load_retrain(run_dir)
    except StoreError:
        return None


def fingerprint(run_dir: Path) -> str:
    """A short token that changes whenever a commit lands, the writer starts or stops, or a
    retrain or an export is written."""
    parts: list[object] = []
    for name in (DB_NAME, DB_NAME + "-wal"):
        try:
            st = os.stat(Path(run_dir) / name)
        except OSError:
            parts.append(None)
            continue
        # An empty WAL is no WAL: a reader (this one too) may create it without a write.
        parts.append((st.st_size, st.st_mtime_ns, st.st_ino) if st.st_size else None)
    parts.append(writer_lock_held(run_dir))
    for name in (RETRAIN_NAME, "export"):  # a retrain, and an export finished (renamed in)
        try:
            parts.append(os.stat(Path(run_dir) / name).st_mtime_ns)
        except OSError:
            parts.append(None)
    return hashlib.sha1(repr(parts).encode(), usedforsecurity=False).hexdigest()[:16]


@dataclass(frozen=True)
class Loaded:
    """One load of a run: its data (or why it could not be read) and the fingerprint."""

    version: str
    data: RunData | None
    error: str | None


class RunSource:
    """One run directory, re-read only when its fingerprint changes. Thread-safe: the
    server answers each request in its own thread."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock = threading.Lock()
        self._last: Loaded | None = None

    def version(self) -> str:
        return fingerprint(self.run_dir)

    def load(self) -> Loaded:
        with self._lock:
            version = fingerprint(self.run_dir)
            if self._last is not None and self._last.version == version:
                return self._last
            try:
                self._last = Loaded(version, load_readonly(self.run_dir), None)
            except (StoreError, ConfigError) as exc:  # shown on the page, not raised
                self._last = Loaded(version, None, str(exc))
            return self._last
