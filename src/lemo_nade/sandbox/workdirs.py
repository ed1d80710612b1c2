"""The child's working directory: a fresh temporary one per candidate (its cwd, HOME and
TMPDIR, the only place it may write; removed afterwards), or one the caller keeps
(``retrain`` keeps its checkpoints there). Main-process side: no torch import.

A temporary directory is named after the pid of the run process that made it, so one
left behind by a run that was SIGKILLed mid-candidate (and so could not clean up) is
recognised and removed by the next run's first candidate (:func:`sweep_once`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lemo_nade.engine.protocol import RESULT_FILE

WORKDIR_PREFIX = "lemo-nade-"  # then the run process's pid and a dash
_WORKDIR_NAME = re.compile(r"lemo-nade-(\d+)-\w+")
_SWEPT: set[tuple[int, str]] = set()  # (pid, temp root) pairs already swept


@contextlib.contextmanager
def workdir(kept: Path | None) -> Iterator[Path]:
    """``kept`` (created, never a stale result in it) or a fresh temporary directory,
    removed afterwards."""
    if kept is not None:
        kept = kept.resolve()
        kept.mkdir(parents=True, exist_ok=True)
        (kept / RESULT_FILE).unlink(missing_ok=True)
        yield kept
        return
    made = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
    try:
        yield made
    finally:
        remove_tree(made)


def remove_tree(path: Path | str) -> None:
    """Remove a directory a candidate may have filled as it liked, never raising: its
    tree may be thousands of levels deep, where ``shutil.rmtree`` (recursive up to
    Python 3.12) hits the recursion limit and paths grow past PATH_MAX; ``rm -rf``
    (fts, iterative, relative to open directories) removes what is left."""
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except (OSError, RecursionError):
        pass
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["rm", "-rf", "--", str(path)], check=False, timeout=300)


def sweep_stale_workdirs(tmp: str | None = None) -> list[str]:
    """Remove candidate temp dirs whose run process is gone; returns their names. Only
    dirs named after a dead pid are touched."""
    root = tmp or tempfile.gettempdir()
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            match = _WORKDIR_NAME.fullmatch(entry.name)
            if match and entry.is_dir(follow_symlinks=False) and not _pid_alive(int(match[1])):
                remove_tree(entry.path)
                removed.append(entry.name)
    return removed


def sweep_once() -> None:
    """:func:`sweep_stale_workdirs` once per process and temp root (a scan per candidate
    would cost a directory listing each time for nothing)."""
    key = (os.getpid(), tempfile.gettempdir())
    if key not in _SWEPT:
        _SWEPT.add(key)
        sweep_stale_workdirs()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
