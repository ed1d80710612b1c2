"""How records become SQL rows and back. Each table's column list is declared once here
and drives its INSERT, its SELECT and the decoding of its rows.

JSON columns are written with sorted keys and no NaN (a non-finite float is ``null``);
a metric that reads back as ``null`` is NaN again, except the fields that may be absent
(``Metrics`` fields whose default is None). The metric columns ``a1`` .. ``params`` copy
``metrics_json`` for SQL queries; records are decoded from ``metrics_json``.
``compliance_json`` holds the candidate's instruction verdicts as ``[code, verdict,
reason]`` lists; NULL (read as none) where there are none, and in iterations recorded
before schema 4. ``epochs`` is a promotion's epochs, NULL for the search's candidates.

Pure: no torch import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Generic, TypeVar

from lemo_nade.history import Attempt, IterationRecord
from lemo_nade.numbers import finite, jsonable
from lemo_nade.records import Evaluation, Metrics, Status, Verdict
from lemo_nade.usage import LLMCall, Usage, usage_dict

T = TypeVar("T")


@dataclass(frozen=True)
class Column(Generic[T]):
    """A table column and the SQL value a record writes into it."""

    name: str
    encode: Callable[[T], Any]


def dumps(value: Any) -> str:
    """The JSON every ``*_json`` column holds: strict (NaN as null), keys sorted."""
    return json.dumps(jsonable(value), allow_nan=False, sort_keys=True)


def _metric(name: str) -> Callable[[IterationRecord], Any]:
    def encode(rec: IterationRecord) -> Any:
        m = rec.evaluation.metrics
        return finite(getattr(m, name)) if m else None

    return encode


def _metrics_json(rec: IterationRecord) -> str | None:
    m = rec.evaluation.metrics
    return dumps(m.to_dict()) if m else None


ITERATION_COLUMNS: tuple[Column[IterationRecord], ...] = (
    Column("idx", lambda r: r.idx),
    Column("started_at", lambda r: r.started_at),
    Column("finished_at", lambda r: r.finished_at),
    Column("parent_idx", lambda r: r.parent_idx),
    Column("architect", lambda r: r.architect),
    Column("status", lambda r: r.evaluation.status.value),
    Column("error", lambda r: r.evaluation.error),
    Column("wall_time_s", lambda r: r.evaluation.wall_time_s),
    Column("log_tail", lambda r: r.evaluation.log_tail),
    Column("a1", _metric("A1")),
    Column("a2", _metric("A2")),
    Column("e1", _metric("E1")),
    Column("e2", _metric("E2")),
    Column("fps", _metric("F")),
    Column("params", lambda r: r.evaluation.metrics.P if r.evaluation.metrics else None),
    Column("metrics_json", _metrics_json),
    Column("cm", lambda r: finite(r.cm)),
    Column("code", lambda r: r.code),
    Column("state_json", lambda r: dumps(r.state) if r.state is not None else None),
    Column("notes", lambda r: r.notes),
    Column("prompt_instructions_json", lambda r: dumps(r.prompt_instructions)),
    Column("raw_instructions_json", lambda r: dumps(r.raw_instructions)),
    Column("resolved_instructions_json", lambda r: dumps(r.resolved_instructions)),
    Column("usage_json", lambda r: dumps(usage_dict(r.usage))),
    Column("failure_kwh", lambda r: finite(r.evaluation.failure_kwh)),
    Column("compliance_json", lambda r: _compliance_json(r.evaluation.compliance)),
    Column("epochs", lambda r: r.epochs),
)

ATTEMPT_COLUMNS: tuple[Column[Attempt], ...] = (
    Column("attempt", lambda a: a.attempt),
    Column("status", lambda a: a.status.value),
    Column("error", lambda a: a.error),
    Column("code", lambda a: a.code),
    Column("notes", lambda a: a.notes),
    Column("usage_json", lambda a: dumps(usage_dict(a.usage))),
    Column("wall_time_s", lambda a: float(a.wall_time_s)),
)

# Each row also has run_id and idx (the iteration), written from the store, not the record.
CALL_COLUMNS: tuple[Column[LLMCall], ...] = (
    Column("attempt", lambda c: c.attempt),
    Column("call_json", lambda c: dumps(c.to_dict())),
)


def _compliance_json(verdicts: tuple[Verdict, ...]) -> str | None:
    """The verdicts as ``[code, verdict, reason]`` lists; NULL when there are none (no
    instruction, or not measured), as in iterations recorded before schema 4."""
    return dumps([list(v) for v in verdicts]) if verdicts else None


def insert_sql(table: str, columns: Sequence[Column[Any]], keys: Sequence[str]) -> str:
    """``INSERT INTO table (keys..., columns...) VALUES (?, ...)``."""
    names = [*keys, *(c.name for c in columns)]
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


def select_sql(table: str, columns: Sequence[Column[Any]], order: str) -> str:
    """``SELECT idx, columns... FROM table WHERE run_id = ? ORDER BY order``."""
    names = ["idx", *(c.name for c in columns if c.name != "idx")]
    return f"SELECT {', '.join(names)} FROM {table} WHERE run_id = ? ORDER BY {order}"


def encode(columns: Sequence[Column[T]], value: T) -> tuple[Any, ...]:
    return tuple(c.encode(value) for c in columns)


def named(columns: Sequence[Column[Any]], row: Sequence[Any]) -> dict[str, Any]:
    """A row from :func:`select_sql` by column name (``idx`` first)."""
    return dict(zip(["idx", *(c.name for c in columns if c.name != "idx")], row, strict=True))


def decode_iteration(row: Mapping[str, Any]) -> IterationRecord:
    """The record of a named iteration row (without its attempts and calls)."""
    evaluation = Evaluation.from_dict(
        {
            "status": row["status"],
            "metrics": _metrics_dict(row["metrics_json"]),
            "error": row["error"],
            "wall_time_s": row["wall_time_s"],
            "log_tail": row["log_tail"],
            "failure_kwh": row["failure_kwh"],
        }
    )
    evaluation = replace(evaluation, compliance=_verdicts(row["compliance_json"]))
    state = row["state_json"]
    return IterationRecord(
        idx=row["idx"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        parent_idx=row["parent_idx"],
        architect=row["architect"],
        prompt_instructions=_pairs(row["prompt_instructions_json"]),
        code=row["code"],
        state=json.loads(state) if state is not None else None,
        notes=row["notes"],
        evaluation=evaluation,
        raw_instructions={
            str(k): float(v) for k, v in json.loads(row["raw_instructions_json"]).items()
        },
        resolved_instructions=_pairs(row["resolved_instructions_json"]),
        cm=row["cm"],
        usage=Usage.from_dict(json.loads(row["usage_json"])),
        epochs=row["epochs"],
    )


def decode_attempt(row: Mapping[str, Any]) -> Attempt:
    return Attempt(
        attempt=row["attempt"],
        status=Status(row["status"]),
        error=row["error"],
        code=row["code"],
        notes=row["notes"],
        usage=Usage.from_dict(json.loads(row["usage_json"])),
        wall_time_s=row["wall_time_s"],
    )


def decode_call(row: Mapping[str, Any]) -> LLMCall:
    """The stored call; the row's own iteration and attempt win over the JSON's."""
    data = json.loads(row["call_json"])
    return LLMCall.from_dict({**data, "iteration": row["idx"], "attempt": row["attempt"]})


def _verdicts(text: str | None) -> tuple[Verdict, ...]:
    """The stored verdicts; none for an iteration recorded before they existed."""
    if text is None:
        return ()
    return tuple(Verdict(str(c), str(v), str(r)) for c, v, r in json.loads(text))


def _pairs(text: str) -> tuple[tuple[str, float], ...]:
    return tuple((str(n), float(v)) for n, v in json.loads(text))


# JSON null is a non-finite float (stored as null) except where the field may be absent
_MAYBE_ABSENT = frozenset(f.name for f in fields(Metrics) if f.default is None)


def _metrics_dict(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    data: dict[str, Any] = json.loads(text)
    return {k: (math.nan if v is None and k not in _MAYBE_ABSENT else v) for k, v in data.items()}
