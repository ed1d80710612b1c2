"""Numbers at the edges: NaN/inf become None (JSON and SQLite have no NaN), and one way
to print a number that may be missing. Pure (no torch)."""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"  # how every table shows a value that is absent or not finite


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (also for bools)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def missing(value: Any) -> bool:
    """Whether a value shows as :data:`MISSING`: None, NaN or an infinity."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) replaced by None, tuples as
    lists and keys as strings: what ``json.dumps(..., allow_nan=False)`` accepts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def fmt(value: Any, spec: str = "", missing_text: str = MISSING) -> str:
    """``missing_text`` for a missing value (None, NaN, an infinity), else a number as
    ``format(value, spec)``: ``fmt(20000, ",")`` is ``20,000``, ``fmt(0.9, ".2%")`` is
    ``90.00%``. Anything else (a string, a bool) prints as ``str(value)``, whatever ``spec``
    says, so one call serves a column whose cells are numbers or words."""
    if missing(value):
        return missing_text
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)
