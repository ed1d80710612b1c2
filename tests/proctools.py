"""Looking at processes through /proc (Linux), for the sandbox tests."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

CANDIDATE_NAME = "lemo-candidate"  # lemo_nade.engine.confine.NAME


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        with contextlib.suppress(OSError):
            found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children(child)
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running, sleeping or stopped: not gone and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def live_candidates(root: int | None = None) -> list[int]:
    """Candidate processes (any depth) below ``root`` (this process by default)."""
    below = descendants(os.getpid() if root is None else root)
    return [p for p in below if comm(p) == CANDIDATE_NAME and alive(p)]


def with_cmdline(needle: str) -> list[int]:
    """Live processes anywhere whose command line contains ``needle``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and needle in cmdline(int(entry)) and alive(int(entry)):
            found.append(int(entry))
    return found


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll ``check`` until it holds or the time is up (the kernel reaps asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
