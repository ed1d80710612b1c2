"""What ``bench/llm.py`` reports for one run, computed from its stored records.

Pure: reads :class:`~lemo_nade.history.IterationRecord` values (from the run store), no
network, no torch. Rates are counts over counts, printed with both numbers.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lemo_nade.history import IterationRecord, searched
from lemo_nade.mends import MENDED
from lemo_nade.records import Status

VERDICTS = ("followed", "not_followed", "unknown")


def summarise(records: Sequence[IterationRecord]) -> dict[str, Any]:
    """Valid rates per attempt and per iteration, repairs, failure kinds, tokens, time,
    the normaliser's removals and instruction following, for one run: the LLM's
    iterations only (a promotion after the search asks the LLM nothing)."""
    records = searched(records)
    attempts = [a for r in records for a in (r.attempts or ())]
    ok_iterations = [r for r in records if r.status is Status.OK]
    latencies = [a.usage.latency_s for a in attempts if a.usage is not None]
    usage = [a.usage for a in attempts if a.usage is not None]
    seconds = [r.finished_at - r.started_at for r in records]
    return {
        "iterations": len(records),
        "iterations_trained": len(ok_iterations),
        "attempts": len(attempts),
        "attempts_trained": sum(a.status is Status.OK for a in attempts),
        "repairs_per_trained_iteration": _mean([len(r.attempts) - 1 for r in ok_iterations]),
        "first_attempt_trained": sum(
            bool(r.attempts) and r.attempts[0].status is Status.OK for r in records
        ),
        "failures": dict(Counter(a.status.value for a in attempts if a.status is not Status.OK)),
        "answers_tidied": sum("removed" in (a.notes or "") for a in attempts),
        # trained on code the tool mended (lemo_nade.mends): the model alone did not
        "iterations_trained_mended": sum(_mended(r) for r in ok_iterations),
        "prompt_tokens": sum(u.prompt_tokens for u in usage),
        "completion_tokens": sum(u.completion_tokens for u in usage),
        "seconds_per_answer_median": statistics.median(latencies) if latencies else None,
        "seconds_per_answer_max": max(latencies) if latencies else None,
        "seconds_per_iteration_median": statistics.median(seconds) if seconds else None,
        "best_A2": max(
            (r.evaluation.metrics.A2 for r in ok_iterations if r.evaluation.metrics), default=None
        ),
        **following(records),
    }


def following(records: Sequence[IterationRecord]) -> dict[str, Any]:
    """Instruction following over the run: each resolved instruction of an iteration
    whose candidate trained, judged against its parent (``compliance`` on the record)."""
    counts: Counter[str] = Counter()
    per_instruction: dict[str, Counter[str]] = {}
    for record in records:
        for code, verdict, _reason in _verdicts(record):
            counts[verdict] += 1
            per_instruction.setdefault(code, Counter())[verdict] += 1
    judged = counts["followed"] + counts["not_followed"]
    return {
        "instructions": {v: counts[v] for v in VERDICTS},
        "following_rate": counts["followed"] / judged if judged else None,
        "per_instruction": {c: dict(v) for c, v in sorted(per_instruction.items())},
    }


def _verdicts(record: IterationRecord) -> list[tuple[str, str, str]]:
    """The checker's verdicts on this iteration's candidate (empty when it did not train
    or had no parent)."""
    return [(v.code, v.verdict, v.reason) for v in record.evaluation.compliance]


def _mended(record: IterationRecord) -> bool:
    trained = [a for a in record.attempts or () if a.status is Status.OK]
    return bool(trained) and MENDED in (trained[-1].notes or "")


def _mean(values: list[int]) -> float | None:
    return statistics.fmean(values) if values else None


def rate(part: int, whole: int) -> str:
    """``"8/10 (80%)"``, or ``"0/0"``."""
    return f"{part}/{whole} ({part / whole:.0%})" if whole else "0/0"
