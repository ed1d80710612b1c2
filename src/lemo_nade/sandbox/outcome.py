"""How a child's ending becomes an :class:`~lemo_nade.records.Evaluation`: its exit status,
the result file it wrote (or did not) and the tail of its log. Main-process side: no
torch import. Nothing here trusts the child: the result file is read without following
links and only when it is a small regular file, and a missing or garbled one is a crash
(or out of memory, when the log says so).
"""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, BinaryIO

from lemo_nade.engine import confine
from lemo_nade.engine.protocol import (
    CONFINE_FAILED,
    RESULT_SIZE_LIMIT_BYTES,
    SETUP_FAILED,
    looks_like_oom,
)
from lemo_nade.records import STRUCTURE_COUNTS, STRUCTURE_LISTS, Evaluation, Metrics, Status
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
    """The child's own result when it wrote a well-formed one (``failed_result`` when it
    wrote a malformed one: :func:`parse_result`); else OOM or a crash."""
    if result_text is not None:
        try:
            return replace(parse_result(result_text), log_tail=tail)
        except ResultError as exc:
            return Evaluation(Status.FAILED_RESULT, error=f"failed_result: {exc}", log_tail=tail)
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


class ResultError(ValueError):
    """A result file that is not a well-formed result; the message says what is wrong."""


_EVALUATION_KEYS = frozenset(
    {"status", "metrics", "error", "wall_time_s", "log_tail", "failure_kwh"}
)
_METRIC_TYPES = {f.name: str(f.type) for f in fields(Metrics)}
_UNIT_INTERVAL = frozenset({"A1", "A2", "test_accuracy"})
_MUST_BE_FINITE = frozenset({"A1", "A2", "E1", "E2", "F"})
STRUCTURE_LIST_CAP = 10_000  # entries per list: far above any model a search makes


def parse_result(text: str) -> Evaluation:
    """A child's result, checked field by field: a known status; strings where text is
    expected; numbers (not booleans, not strings) where numbers are, finite where the
    rules or budgets read them, never negative, accuracies within [0, 1]; no unknown key.
    Raises :class:`ResultError`."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ResultError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ResultError(f"a {type(data).__name__}, not an object")
    _no_unknown(data, _EVALUATION_KEYS, "result")
    try:
        status = Status(data.get("status"))
    except ValueError:
        raise ResultError(f"status {data.get('status')!r} is not a status") from None
    for key in ("error", "log_tail"):
        if not isinstance(data.get(key, ""), str):
            raise ResultError(f"{key} is not text")
    _number("wall_time_s", data.get("wall_time_s", 0.0))
    if data.get("failure_kwh") is not None:
        _number("failure_kwh", data["failure_kwh"], finite=True)
    metrics = data.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise ResultError("metrics is not an object")
        _no_unknown(metrics, frozenset(_METRIC_TYPES), "metrics")
        for key, value in metrics.items():
            _metric(key, value)
    return Evaluation.from_dict({**data, "status": status.value})


def _no_unknown(data: dict[str, Any], known: frozenset[str], what: str) -> None:
    extra = sorted(str(k) for k in data if k not in known)
    if extra:
        raise ResultError(f"{what} has unknown keys: {', '.join(extra[:5])}")


def _metric(key: str, value: Any) -> None:
    kind = _METRIC_TYPES[key]
    if value is None and "None" in kind:
        return
    if key == "structure":
        _structure(value)
    elif kind.startswith("str"):
        if not isinstance(value, str):
            raise ResultError(f"metrics.{key} is not text")
    elif kind.startswith("dict"):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ResultError(f"metrics.{key} is not an object of numbers")
        for part, number in value.items():
            _number(f"metrics.{key}.{part}", number, finite=True)
    elif kind.startswith("int"):
        _whole(f"metrics.{key}", value)
    else:
        _number(f"metrics.{key}", value, finite=key in _MUST_BE_FINITE or "None" in kind)
        if key in _UNIT_INTERVAL and not 0.0 <= value <= 1.0:
            raise ResultError(f"metrics.{key} = {value!r} is not an accuracy in [0, 1]")


def _structure(value: Any) -> None:
    """Only known keys; counts are whole numbers >= 0, lists hold finite numbers >= 0
    (whole numbers but the dropout rates, which are within [0, 1])."""
    if not isinstance(value, dict):
        raise ResultError("metrics.structure is not an object")
    _no_unknown(value, STRUCTURE_COUNTS | STRUCTURE_LISTS, "metrics.structure")
    for key, item in value.items():
        name = f"metrics.structure.{key}"
        if key in STRUCTURE_COUNTS:
            _whole(name, item)
            continue
        if not isinstance(item, list) or len(item) > STRUCTURE_LIST_CAP:
            raise ResultError(f"{name} is not a list of at most {STRUCTURE_LIST_CAP} numbers")
        for number in item:
            if key == "dropout_rates":
                _number(name, number, finite=True)
                if number > 1:
                    raise ResultError(f"{name} holds {number!r}, not a rate in [0, 1]")
            else:
                _whole(name, number)


def _whole(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ResultError(f"{name} is not a whole number >= 0")


def _number(name: str, value: Any, finite: bool = False) -> None:
    """A number, not negative; NaN allowed only where ``finite`` is False (an optional
    figure that could not be measured)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultError(f"{name} is not a number ({type(value).__name__})")
    if math.isnan(value):
        if finite:
            raise ResultError(f"{name} is NaN")
        return
    if math.isinf(value) or value < 0:
        raise ResultError(f"{name} = {value!r} is not a finite number >= 0")
