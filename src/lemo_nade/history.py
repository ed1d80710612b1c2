"""What a run remembers of each iteration, and what the loop, the budgets, the reports and
the retrain derive from it: the best candidate, the resources spent, the time spent.

Pure: no torch. The store (:mod:`lemo_nade.store`) writes and reads these records; the
loop (:mod:`lemo_nade.search`) makes them; nothing here depends on either.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lemo_nade.programs import same_program
from lemo_nade.records import Evaluation, Proposal, ProposalRequest, Status
from lemo_nade.usage import LLMCall, Usage, sum_usage


@dataclass(frozen=True)
class Attempt:
    """One proposal inside an iteration and how its evaluation ended. An iteration keeps
    every attempt (the first answer and each repair); the last is the iteration's result."""

    attempt: int  # 0, then 1..max_repairs
    status: Status
    error: str = ""
    code: str = ""  # the code evaluated, or the raw answer when no code could be extracted
    notes: str = ""
    usage: Usage | None = None  # this attempt's LLM call; None for an architect without one
    wall_time_s: float = 0.0

    @classmethod
    def of(cls, attempt: int, proposal: Proposal, evaluation: Evaluation) -> Attempt:
        return cls(
            attempt=attempt,
            status=evaluation.status,
            error=evaluation.error,
            code=proposal.code or proposal.answer,
            notes=proposal.notes,
            usage=proposal.usage,
            wall_time_s=evaluation.wall_time_s,
        )


@dataclass(frozen=True)
class IterationRecord:
    """One committed iteration of Algorithm 1: what was asked, proposed, measured and derived."""

    idx: int
    started_at: float  # epoch seconds
    finished_at: float
    parent_idx: int | None
    architect: str
    prompt_instructions: tuple[tuple[str, float], ...]
    code: str
    state: dict[str, Any] | None
    notes: str
    evaluation: Evaluation
    raw_instructions: dict[str, float] = field(default_factory=dict)
    resolved_instructions: tuple[tuple[str, float], ...] = ()
    cm: float | None = None
    usage: Usage | None = None  # summed over the attempts; None when no LLM was used
    attempts: tuple[Attempt, ...] = ()  # empty in runs recorded before repairs existed
    calls: tuple[LLMCall, ...] = ()  # the LLM exchanges, for replay
    epochs: int | None = None  # a promotion's epochs (``promote``); None: the run's ``epochs``

    @property
    def status(self) -> Status:
        return self.evaluation.status

    @property
    def promoted(self) -> bool:
        """Whether this is a promotion: candidate ``parent_idx`` trained again for
        ``epochs`` after the search (:mod:`lemo_nade.promotion`), not a search candidate."""
        return self.epochs is not None


def searched(records: Sequence[IterationRecord]) -> list[IterationRecord]:
    """The search's own candidates: every record but the promotions."""
    return [r for r in records if not r.promoted]


def best_of(records: Sequence[IterationRecord]) -> IterationRecord | None:
    """Highest CM among good candidates; the earliest wins a tie (Algorithm 1, ``CM > BCM``)."""
    best: IterationRecord | None = None
    for rec in records:
        if rec.cm is not None and (best is None or best.cm is None or rec.cm > best.cm):
            best = rec
    return best


def open_best(
    records: Sequence[IterationRecord], duplicates: bool = True, patience: int = 0
) -> IterationRecord | None:
    """The best candidate by CM whose neighbourhood is not spent; the best itself when
    every one is. Spent, with ``duplicates``: a child iteration ended as a duplicate (every
    attempt proposed a model the run had trained; with thresholds the first model's
    energy did not meet, the offline architect's children of a lean best were duplicates
    in 97 of 190 iterations of one run). With ``patience`` > 0: that many trained children
    did not beat it by CM. A best whose CM was a lucky measurement (FPS moves 1.5x between
    runs of one model here) otherwise stays the parent: in setting 5, 43-183 children of
    one parent on 5 of 8 seeds."""
    spent = {r.parent_idx for r in records if r.status is Status.DUPLICATE} if duplicates else set()
    if patience > 0:
        cm = {r.idx: r.cm for r in records if r.cm is not None}
        lost = Counter(
            r.parent_idx
            for r in records
            if r.cm is not None and r.parent_idx in cm and r.cm <= cm[r.parent_idx]
        )
        spent |= {idx for idx, n in lost.items() if n >= patience}
    return best_of([r for r in records if r.idx not in spent]) or best_of(records)


def totals(records: Sequence[IterationRecord]) -> dict[str, float]:
    """What a run has spent so far, for the budgets and the report: LLM tokens, USD (an
    unknown price counts as 0) and device kWh (before PUE)."""
    usage = sum_usage(r.usage for r in records)
    energy = sum(r.evaluation.spent_kwh for r in records)
    return {
        "total_tokens": float(usage.total_tokens if usage else 0),
        "cost_usd": float((usage.cost_usd if usage else None) or 0.0),
        "energy_kwh": energy,
    }


def budget_usage(records: Sequence[IterationRecord]) -> dict[str, float]:
    """What each budget key (``max_hours`` ...) measures, spent so far: the figures the
    search stops on and the dashboard shows against their limits."""
    spent = totals(records)
    return {
        "max_hours": elapsed_s(records) / 3600,
        "max_tokens": spent["total_tokens"],
        "max_cost_usd": spent["cost_usd"],
        "max_energy_kwh": spent["energy_kwh"],  # device kWh, before PUE
    }


def elapsed_s(records: Sequence[IterationRecord]) -> float:
    """Time spent in recorded iterations (resumes do not count downtime)."""
    return sum(max(0.0, r.finished_at - r.started_at) for r in records)


def asked(
    records: Sequence[IterationRecord], parent: IterationRecord, n: int, memory: bool = False
) -> tuple[tuple[str, float], ...]:
    """The instructions the next request carries: all of ``parent``'s resolved ones (Algorithm
    3, most important first) when ``n`` is 0 (the paper), else a window of ``n`` of them
    (``max_instructions``): the first ``n``, or, when ``parent`` already had a child that
    failed or did not beat it, the ``n`` after the ones that child was asked (wrapping
    round). Asked the same thing again, a 0.5B model failed the same way every iteration
    and the offline architect stacked the same two edits on the best model until it broke;
    asked the next ones, either tries something else. With ``memory``, the window moves
    over :func:`lineage_order`'s order instead of the rules' own."""
    resolved = tuple(parent.resolved_instructions)
    if not n:
        return resolved
    if memory:
        resolved = lineage_order(records, resolved)
    child = next((r for r in reversed(records) if r.parent_idx == parent.idx), None)
    if child is not None and not _beat(child, parent):
        return next_window(child.prompt_instructions, resolved, n)
    return resolved[:n]


LOSING_TRIES = 2  # lineage memory: children that followed an instruction before it counts
LOSING_RATE = 4  # ... and it is asked last when fewer than 1 in this many of them won


def was_asked(
    records: Sequence[IterationRecord],
    parent: IterationRecord,
    instructions: Sequence[tuple[str, float]],
) -> bool:
    """Whether an earlier iteration asked ``parent`` for exactly ``instructions`` (the
    window came round again: at temperature 0 an LLM gives the same answer)."""
    wanted = tuple(instructions)
    return any(r.parent_idx == parent.idx and r.prompt_instructions == wanted for r in records)


def _beat(child: IterationRecord, parent: IterationRecord) -> bool:
    """Whether ``child`` trained and ranks above ``parent`` by CM (Eq. 1)."""
    ok = child.status is Status.OK and child.cm is not None and parent.cm is not None
    return ok and child.cm > parent.cm  # type: ignore[operator]


def moved_on(
    request: ProposalRequest, resolved: Sequence[tuple[str, float]], n: int
) -> ProposalRequest:
    """``request`` for the next attempt after an answer that changed nothing: asking the
    next ``n`` of ``resolved`` (:func:`next_window`); unchanged when ``n`` is 0."""
    if not n:
        return request
    return replace(request, instructions=next_window(request.instructions, resolved, n))


def next_window(
    current: Sequence[tuple[str, float]], resolved: Sequence[tuple[str, float]], n: int
) -> tuple[tuple[str, float], ...]:
    """The ``n`` of ``resolved`` after ``current`` (wrapping round); the first ``n`` when
    ``current`` is not among them; all of them when there are no more than ``n``."""
    items = list(resolved)
    if len(items) <= n:
        return tuple(items)
    start = items.index(current[0]) if current and current[0] in items else -n
    nxt = (start + n) % len(items)
    return tuple((items * 2)[nxt : nxt + n])


def lineage_order(
    records: Sequence[IterationRecord], resolved: Sequence[tuple[str, float]]
) -> tuple[tuple[str, float], ...]:
    """``resolved`` with the instructions that have mostly lost in this run moved to the
    end, in their own order: at least ``LOSING_TRIES`` trained children followed one
    (the compliance verdict) and fewer than one in ``LOSING_RATE`` of them beat their
    parent by CM. In the 8-seed CIFAR-10 bench, children that added a dense layer beat
    their parent 3 times in 36, a weight-init change 0 in 11, a conv block 22 in 94.
    Asking them last measured no better (README, "Does the search discover?"): off by
    default (``lineage_memory``)."""
    tries: dict[str, int] = {}
    wins: dict[str, int] = {}
    by_idx = {r.idx: r for r in records}
    for child in records:
        parent = by_idx.get(child.parent_idx) if child.parent_idx is not None else None
        if parent is None or child.status is not Status.OK:
            continue
        for verdict in child.evaluation.compliance:
            if verdict.verdict == "followed":
                tries[verdict.code] = tries.get(verdict.code, 0) + 1
                wins[verdict.code] = wins.get(verdict.code, 0) + _beat(child, parent)
    losing = {
        code
        for code, n in tries.items()
        if n >= LOSING_TRIES and wins.get(code, 0) * LOSING_RATE < n
    }
    kept = [item for item in resolved if item[0] not in losing]
    return (*kept, *(item for item in resolved if item[0] in losing))


def trained_before(code: str, records: Sequence[IterationRecord]) -> IterationRecord | None:
    """The earlier candidate of this run that trained as this same program
    (:func:`lemo_nade.programs.same_program`: comments and names aside), if any: the same
    model, split, seed and protocol give the same result, so it is not trained again."""
    return next((r for r in records if r.status is Status.OK and same_program(r.code, code)), None)
