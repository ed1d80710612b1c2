"""Which runs and sweeps the dashboard shows, from the directories it was given.

Each directory given is a run (it holds ``run.sqlite``), a sweep (``plan.json``) or a
directory of runs and sweeps (``lemo-nade run``'s ``runs/``). It is scanned again on
each request for the runs list, so a run started after the dashboard appears in it.

Runs and sweeps are named in URLs by a key made here (``"0/NAME"``: the index of the
directory given, then the path under it) and looked up in this catalog; a key is
never joined to a path, so no URL can reach a file outside the directories given.

Pure: no torch import.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from lemo_nade.store import DB_NAME, StoreError
from lemo_nade.sweeps.plan import PLAN_NAME, read_plan, run_dir_of
from lemo_nade.ui.readonly import RunSource


@dataclass(frozen=True)
class Entry:
    """A run or a sweep found under one of the directories given."""

    key: str
    path: Path
    sweep: str | None = None  # for a run: the key of the sweep it belongs to


def check_dirs(dirs: list[Path]) -> list[Path]:
    """The directories, checked before serving: a missing one, a file, or a directory that
    holds files but no run or sweep is bad input (a one-line :class:`StoreError`)."""
    checked = []
    for d in dirs:
        if not d.exists():
            raise StoreError(f"{d}: no such directory; pass a run, sweep or runs directory")
        if not d.is_dir():
            raise StoreError(f"{d} is not a directory; pass a run, sweep or runs directory")
        if _kind(d) is None and any(d.iterdir()) and not _children(d):
            raise StoreError(
                f"{d} holds no run or sweep; pass a directory made by `lemo-nade run` "
                "or `lemo-nade sweep`, or the directory that holds them"
            )
        checked.append(d)
    return checked


def _kind(d: Path) -> str | None:
    if (d / DB_NAME).is_file():
        return "run"
    if (d / PLAN_NAME).is_file():
        return "sweep"
    return None


def _children(d: Path) -> list[Path]:
    try:
        return sorted(c for c in d.iterdir() if c.is_dir() and _kind(c) is not None)
    except OSError:
        return []


class Catalog:
    """The runs and sweeps under the directories given, and one :class:`RunSource` per
    run (kept across scans, so each keeps its cache)."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = [Path(d) for d in dirs]
        self._lock = threading.Lock()
        self._sources: dict[Path, RunSource] = {}
        self.runs: dict[str, Entry] = {}
        self.sweeps: dict[str, Entry] = {}
        self.scan()

    def scan(self) -> None:
        """Look at the directories again (a listing, no database is opened)."""
        runs: dict[str, Entry] = {}
        sweeps: dict[str, Entry] = {}
        for n, root in enumerate(self.dirs):
            found = [root] if _kind(root) else _children(root)
            for path in found:
                key = f"{n}/{path.name}" if path != root else f"{n}/"
                if _kind(path) == "run":
                    runs[key] = Entry(key, path)
                    continue
                sweeps[key] = Entry(key, path)
                for name in _sweep_runs(path):
                    run_dir = run_dir_of(path, name)
                    runs[f"{key}/{name}"] = Entry(f"{key}/{name}", run_dir, sweep=key)
        with self._lock:
            self.runs, self.sweeps = runs, sweeps

    def source(self, key: str) -> RunSource | None:
        """The run named ``key``, or None when the catalog holds no such run."""
        with self._lock:
            entry = self.runs.get(key)
            if entry is None:
                return None
            return self._sources.setdefault(entry.path, RunSource(entry.path))


def _sweep_runs(sweep_dir: Path) -> list[str]:
    """The planned runs of a sweep in plan order (an unreadable plan: none)."""
    try:
        plan = read_plan(sweep_dir)
    except (StoreError, ValueError, OSError):
        return []
    return [str(run["name"]) for run in plan.get("runs", [])]
