"""Promotion: after the search, its best candidates are trained again for longer.

At a search fidelity a CPU can afford (8 epochs on 100 images per class), the best of
many candidates is partly the luckiest, and the candidates it beat by a point or two
might overtake it with more training: successive halving's last rung. With ``promote``
set (2 in ``search = "discover"``, 0 in ``search = "paper"``), the run ends by training
its ``promote`` best candidates by CM (Eq. 1; distinct code, best first) again from
scratch for ``promote_epochs`` (default twice ``epochs``), each on the same split with
the same seed. A promotion is an iteration record of its own: the candidate's code,
``parent_idx`` the candidate, ``epochs`` set. The run's best (``history.best_of``) is
chosen among all records, so it may be a promoted one; the search's own choices (the
parent, the instruction window, duplicates) see only the search's candidates
(``history.searched``).

When: ``iterations`` counts the search's candidates, and the promotions follow them.
With ``max_hours`` the search stops before a candidate that would leave less than the
promotions are estimated to need (:func:`time_to_promote`), and a promotion may run up
to 3x its estimate, past the budget, rather than be cut (:func:`time_limit`). A budget
that is spent (the hours, energy, tokens or cost) stops the run without them;
``lemo-nade resume`` with a larger budget runs them.

Pure: no torch import.
"""

from __future__ import annotations

from collections.abc import Sequence

from lemo_nade.config import RunConfig
from lemo_nade.history import IterationRecord, elapsed_s, searched
from lemo_nade.records import Proposal, ProposalRequest, TaskSpec

OVERRUN = 3.0  # a promotion's time limit, at least this many times its estimate


def chosen(records: Sequence[IterationRecord], n: int) -> list[IterationRecord]:
    """The ``n`` best search candidates by CM, best first (the earlier wins a tie, as in
    ``best_of``), one per distinct code."""
    ranked = sorted(
        (r for r in searched(records) if r.cm is not None),
        key=lambda r: (-r.cm, r.idx),  # type: ignore[operator]
    )
    out: list[IterationRecord] = []
    for rec in ranked:
        if len(out) == n:
            break
        if all(rec.code != o.code for o in out):
            out.append(rec)
    return out


def pending(records: Sequence[IterationRecord], n: int) -> list[IterationRecord]:
    """The chosen candidates not promoted yet, best first."""
    done = {r.parent_idx for r in records if r.promoted}
    return [r for r in chosen(records, n) if r.idx not in done]


def estimate_s(config: RunConfig, candidate: IterationRecord) -> float:
    """A promotion's expected seconds: the candidate's own evaluation time x
    ``promote_epochs / epochs`` (measured on 3 CIFAR-10 candidates at 8 and 16 epochs,
    alone on our 2 cores: 1.8-2.0x)."""
    return candidate.evaluation.wall_time_s * config.promotion_epochs / config.epochs


def reserve_s(config: RunConfig, records: Sequence[IterationRecord]) -> float:
    """Seconds all of the run's promotions are estimated to take, the ones already done
    included (so the estimate does not shrink while they run and the search stays over)."""
    return sum(estimate_s(config, r) for r in chosen(records, config.promote))


def time_to_promote(config: RunConfig, records: Sequence[IterationRecord]) -> bool:
    """Whether the search must stop now to leave ``max_hours`` time for the promotions:
    the time spent, one more search candidate (their mean time) and :func:`reserve_s`
    would reach it."""
    if not config.promote or config.max_hours is None:
        return False
    own = searched(records)
    next_s = elapsed_s(own) / len(own) if own else 0.0
    return elapsed_s(records) + next_s + reserve_s(config, records) >= config.max_hours * 3600


def time_limit(
    config: RunConfig, records: Sequence[IterationRecord], candidate: IterationRecord
) -> tuple[float, bool]:
    """A promotion's time limit, and whether ``max_hours`` set it rather than its own
    (``candidate_timeout_s`` x ``promote_epochs / epochs``). It gets at least
    :data:`OVERRUN` x its estimate: on a busy machine a promotion cut at the budget's
    end is all its training lost, so the run may end that much past ``max_hours``. One
    bench run's promotion of a 5.7 s candidate (estimate 11.4 s) was cut at 22.6 s, with
    a test suite running beside it."""
    own = config.candidate_timeout_s * config.promotion_epochs / config.epochs
    if config.max_hours is None:
        return own, False
    left = config.max_hours * 3600 - elapsed_s(records)
    limit = max(1.0, min(own, max(left, OVERRUN * estimate_s(config, candidate))))
    return limit, limit < own


def asked(
    idx: int, task: TaskSpec, candidate: IterationRecord, config: RunConfig
) -> tuple[ProposalRequest, Proposal]:
    """A promotion as an iteration records it: a request with no instructions (the
    architect is not asked) and the candidate's code, with notes saying what it is."""
    request = ProposalRequest(
        iteration=idx,
        task=task,
        parent_code=candidate.code,
        parent_metrics=candidate.evaluation.metrics,
        instructions=(),
        seed=config.seed,
    )
    notes = (
        f"promotion: candidate {candidate.idx} trained again for {config.promotion_epochs} epochs"
    )
    return request, Proposal(candidate.code, candidate.state, notes)
