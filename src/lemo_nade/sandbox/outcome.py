"""How a child's ending becomes an :class:`~lemo_nade.records.Evaluation`: its exit status,
the result file it wrote (or did not) and the tail of its log. Main-process side: no
torch import. Nothing here trusts the child: the result file is read without following
links and only when it is a small regular file, and a missing or garbled one is a crash
(or out of memory, when the log says so).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from lemo_nade.engine import confine
from lemo_nade.engine.protocol import (
    CONFINE_FAILED,
    RESULT_SIZE_LIMIT_BYTES,
    SETUP_FAILED,
    looks_like_oom,
)
from lemo_nade.records import Evaluation, Status
from lemo_nade.sandbox.handover import read_regular
from lemo_nade.sandbox.launch import Outcome, last_lines

FILE_SIZE_LIMIT_BYTES = confine.FILE_SIZE_LIMIT_BYTES
EXIT_HINTS = {
    CONFINE_FAILED: " (the sandbox could not confine it; see the log)",
    SETUP_FAILED: " (the sandbox could not set up the child)",
}


def evaluation_of(outcome: Outcome, result: Path, tail: str, timeout_s: float) -> Evaluation:
    """What the run records for a child that ended with ``outcome``."""
    if outcome.timed_out:
        return Evaluation(
            Status.TIMEOUT,
            error=f"timeout: the candidate ran longer than {timeout_s:g} s (wall clock) "
            "and was killed; make it smaller or faster",
            log_tail=tail,
        )
    if outcome.problem:
        return Evaluation(Status.CRASHED, error=f"crashed: {outcome.problem}", log_tail=tail)
    return classify(outcome.returncode, read_result(result), tail)


def read_tail(log: BinaryIO, cap_bytes: int) -> str:
    """The last ``cap_bytes`` of the log, decoded leniently."""
    size = os.fstat(log.fileno()).st_size
    log.seek(max(0, size - max(0, cap_bytes)))
    return log.read(max(0, cap_bytes)).decode("utf-8", errors="replace")


def read_result(path: Path) -> str | None:
    """The result file's text, or None when missing, not a regular file, or too large
    (:func:`lemo_nade.sandbox.handover.read_regular`)."""
    data = read_regular(path, RESULT_SIZE_LIMIT_BYTES)
    return None if data is None else data.decode("utf-8", errors="replace")


def classify(returncode: int, result_text: str | None, tail: str) -> Evaluation:
    """The child's own result when it wrote a readable one; else OOM or a crash."""
    if result_text is not None:
        try:
            return replace(Evaluation.from_dict(json.loads(result_text)), log_tail=tail)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            problem = f"wrote an unreadable result ({type(exc).__name__}: {exc})"
    else:
        problem = "wrote no result"
    end = last_lines(tail)
    if looks_like_oom(tail):
        hint = " (if every candidate ends so, memory_limit_mb is too small for torch itself)"
        return Evaluation(
            Status.OOM, error=f"out of memory: the child {problem}{hint}\n{end}", log_tail=tail
        )
    return Evaluation(
        Status.CRASHED,
        error=f"crashed: the child {describe_exit(returncode)} and {problem}\n{end}",
        log_tail=tail,
    )


def describe_exit(returncode: int) -> str:
    """``returncode`` (as :mod:`subprocess` gives it) in words, with a likely cause."""
    if returncode >= 0:
        return f"exited with code {returncode}{EXIT_HINTS.get(returncode, '')}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hints = {
        "SIGKILL": " (possibly the kernel's OOM killer)",
        "SIGXFSZ": f" (a file exceeded {FILE_SIZE_LIMIT_BYTES // 2**20} MB)",
        "SIGSEGV": " (a crash in native code)",
        "SIGXCPU": " (the CPU-time limit)",
    }
    return f"was killed by {name}{hints.get(name, '')}"
