"""What the LLM architects spend and say: usage (tokens, latency, cost) and the recorded
calls that ``--llm replay:RUN_DIR`` answers from.

Pure: no torch. Both round-trip through JSON (``to_dict``/``from_dict``) in the exact
shape the run store has always held, so old runs read back unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# Usage's counters, added up by :func:`sum_usage` (``cost_usd`` is added apart: it may be None).
USAGE_KEYS = ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "latency_s")


@dataclass(frozen=True)
class Usage:
    """What LLM calls cost: of one call (an architect's answer) or summed (an iteration).

    ``latency_s`` is seconds spent waiting for answers; ``cost_usd`` is None when a
    call's price was unknown (then so is any sum holding it). ``usage_reported`` and
    ``replayed`` belong to one call and are None in a sum (and then absent from JSON).
    """

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float | None = 0.0
    usage_reported: bool | None = None  # whether the endpoint reported the token counts
    replayed: bool | None = None  # answered from a recording (``--llm replay:RUN_DIR``)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: getattr(self, key) for key in USAGE_KEYS}
        out["cost_usd"] = self.cost_usd
        for key in ("usage_reported", "replayed"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Usage | None:
        """None for ``{}``: what the store holds when no LLM was used."""
        if not data:
            return None
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def usage_dict(usage: Usage | None) -> dict[str, Any]:
    """The JSON form the store and the recorded calls hold: ``{}`` for no LLM usage."""
    return usage.to_dict() if usage is not None else {}


def sum_usage(usages: Iterable[Usage | None]) -> Usage | None:
    """Add up LLM usage; ``cost_usd`` is None when any call's price was unknown; None
    when no LLM was used at all."""
    seen = [usage for usage in usages if usage is not None]
    if not seen:
        return None
    totals: dict[str, Any] = dict.fromkeys(USAGE_KEYS, 0)
    cost: float | None = 0.0
    for usage in seen:
        for key in USAGE_KEYS:
            totals[key] += getattr(usage, key) or 0
        cost = None if cost is None or usage.cost_usd is None else cost + usage.cost_usd
    return Usage(**totals, cost_usd=cost)


# The fields of a recorded call that LLMCall types; the rest of it is ``payload``.
_CALL_KEYS = ("iteration", "attempt", "usage", "error")


@dataclass(frozen=True)
class LLMCall:
    """One exchange with an LLM as stored for replay (never holding the API key).

    ``payload`` is the rest of the record, free-form JSON kept whole because replay
    returns it as recorded: ``architect``, ``base_url``, ``request`` (messages and
    parameters), ``response`` (``text``, ``finish_reason``), ``at`` (epoch seconds), and
    in a replay ``replayed_from`` and ``prompt_matches``. ``error`` is set when the
    endpoint's answer was not a chat completion at all.
    """

    iteration: int
    attempt: int
    usage: Usage | None = None
    error: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def request(self) -> Mapping[str, Any]:
        return dict(self.payload.get("request") or {})

    @property
    def response(self) -> Mapping[str, Any]:
        return dict(self.payload.get("response") or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.payload,
            "iteration": self.iteration,
            "attempt": self.attempt,
            "usage": usage_dict(self.usage),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LLMCall:
        return cls(
            iteration=int(data["iteration"]),
            attempt=int(data["attempt"]),
            usage=Usage.from_dict(data.get("usage")),
            error=data.get("error"),
            payload={k: v for k, v in data.items() if k not in _CALL_KEYS},
        )
