"""Which instructions a request carries with ``max_instructions`` set (history.asked):
the first window for a parent's first child; after a child of the same parent that failed
or did not beat it, the next window; all of them for the paper's loop; with
``lineage_memory``, the instructions that mostly lost in this run asked last."""

from __future__ import annotations

from dataclasses import replace

from lemo_nade.config import build_config
from lemo_nade.datasets import resolve_dataset
from lemo_nade.history import asked, best_of, lineage_order, open_best, was_asked
from lemo_nade.records import Evaluation, Status, Verdict
from lemo_nade.search import Progress, Search
from test_report import record

RESOLVED = (("ADL", 1.0), ("ACL", 1.0), ("ASC", 0.6), ("AMK", 0.6), ("AR", 0.4))


def parent_and(*children_acc: float | None) -> list:
    parent = replace(record(0, None, 0.5), resolved_instructions=RESOLVED)
    records = [parent]
    window = RESOLVED[:2]
    for i, acc in enumerate(children_acc, start=1):
        child = record(i, 0, acc, instructions=window)
        records.append(child)
        window = asked(records, parent, 2)
    return records


def test_a_first_child_is_asked_the_most_important_instructions() -> None:
    (parent,) = parent_and()
    assert asked([parent], parent, 2) == RESOLVED[:2]
    assert asked([parent], parent, 0) == RESOLVED  # the paper: all of them


def test_after_a_worse_or_failed_child_the_next_window_is_asked() -> None:
    records = parent_and(0.4, None)  # a worse child, then a failed one
    parent = records[0]
    assert records[1].prompt_instructions == RESOLVED[:2]
    assert records[2].prompt_instructions == RESOLVED[2:4]
    assert asked(records, parent, 2) == (RESOLVED[4], RESOLVED[0])  # wraps round


def test_a_child_that_beat_its_parent_does_not_move_the_window() -> None:
    records = parent_and(0.9)
    assert asked(records, records[0], 2) == RESOLVED[:2]


def followed(rec, *codes: str, verdict: str = "followed"):  # type: ignore[no-untyped-def]
    """``rec`` with the compliance checker's verdicts on ``codes``."""
    verdicts = tuple(Verdict(code, verdict, "") for code in codes)
    return replace(rec, evaluation=replace(rec.evaluation, compliance=verdicts))


def lineage(*children: tuple[float, tuple[str, ...]]) -> list:
    """A parent at 0.5 and its trained children, each (accuracy, instructions followed)."""
    parent = replace(record(0, None, 0.5), resolved_instructions=RESOLVED)
    kids = [followed(record(i, 0, acc), *codes) for i, (acc, codes) in enumerate(children, 1)]
    return [parent, *kids]


def test_instructions_whose_children_lost_are_asked_last() -> None:
    records = lineage((0.4, ("ADL", "ACL")), (0.45, ("ADL", "ASC")), (0.6, ("ACL",)))
    # ADL: 2 followed, 0 won -> last; ACL: 2 followed, 1 won; ASC: only 1 try
    order = [code for code, _ in lineage_order(records, RESOLVED)]
    assert order == ["ACL", "ASC", "AMK", "AR", "ADL"]
    assert asked(records[:1], records[0], 2, memory=True) == RESOLVED[:2]  # nothing known yet


def test_one_win_in_four_keeps_an_instruction_in_place_and_one_in_five_does_not() -> None:
    four = lineage((0.6, ("ADL",)), *[(0.4, ("ADL",))] * 3)
    assert lineage_order(four, RESOLVED)[0][0] == "ADL"
    five = lineage((0.6, ("ADL",)), *[(0.4, ("ADL",))] * 4)
    assert lineage_order(five, RESOLVED)[-1][0] == "ADL"


def test_only_followed_instructions_of_trained_children_count() -> None:
    records = lineage((0.4, ("ADL",)), (0.4, ()))
    records[2] = followed(records[2], "ADL", verdict="not_followed")
    failed = followed(record(3, 0, None), "ADL")  # a failed child says nothing of the edit
    assert lineage_order([*records, failed], RESOLVED) == RESOLVED


def test_the_memory_moves_the_window_and_the_paper_loop_ignores_it() -> None:
    records = lineage((0.4, ("ADL",)), (0.45, ("ADL",)))
    parent = records[0]
    assert asked(records, parent, 0, memory=True) == RESOLVED  # the paper: all, in order
    assert asked([parent], parent, 2, memory=True) == RESOLVED[:2]
    remembered = asked(records, parent, 2, memory=True)
    assert "ADL" not in [code for code, _ in remembered]


def test_a_window_that_comes_round_again_was_asked_before() -> None:
    records = parent_and(0.4, 0.4, 0.4)  # 5 instructions, windows of 2: round again
    parent = records[0]
    assert was_asked(records, parent, RESOLVED[:2])
    assert was_asked(records, parent, (RESOLVED[4], RESOLVED[0]))
    assert not was_asked(records, parent, RESOLVED[1:3])
    assert not was_asked(records, records[1], RESOLVED[:2])  # another parent


def test_the_loop_marks_a_request_the_window_brought_round_again() -> None:
    config = build_config({}, {"search": "discover", "max_instructions": 2})
    task = resolve_dataset("digits", None)
    search = Search(config, task, None, None, None, Progress())  # type: ignore[arg-type]
    records = parent_and(0.4, 0.4)
    request, parent_idx = search.request(3, records)
    assert parent_idx == 0 and request.instructions == (RESOLVED[4], RESOLVED[0])
    assert not request.asked_before
    request, _ = search.request(6, parent_and(*[0.4] * 5))  # 5 windows of 2 in 5: round
    assert request.instructions == RESOLVED[:2] and request.asked_before


def test_a_best_whose_children_were_all_duplicates_is_passed_over() -> None:
    def duplicate(idx: int, parent: int):  # type: ignore[no-untyped-def]
        spent = Evaluation(Status.DUPLICATE, error="the code is a model this run already trained")
        return replace(record(idx, parent, None), evaluation=spent)

    records = [record(0, None, 0.5), record(1, 0, 0.6), record(2, 1, 0.55)]
    assert open_best(records) == best_of(records) == records[1]
    records.append(duplicate(3, 1))
    assert best_of(records) == records[1]  # still the run's best
    assert open_best(records) == records[2]  # the next best is the parent
    records += [duplicate(4, 2), duplicate(5, 0)]
    assert open_best(records) == records[1]  # all spent: the best again
    config = build_config({}, {"search": "discover", "pass_spent": True})
    search = Search(config, resolve_dataset("digits", None), None, None, None, Progress())  # type: ignore[arg-type]
    assert search.request(6, records[:4])[1] == 2
    plain = Search(build_config({}, {}), search.task, None, None, None, Progress())  # type: ignore[arg-type]
    assert plain.request(6, records[:4])[1] == 1


def test_a_best_that_parent_patience_children_did_not_beat_is_passed_over() -> None:
    """``parent_patience = 3``: after 3 trained children of the best that did not beat it
    (a failed child does not count), the next best is the parent; 2 are not enough; 0
    never passes over."""
    records = [record(0, None, 0.5), record(1, 0, 0.6), record(2, 0, 0.55)]
    records += [record(3, 1, 0.52), record(4, 1, None), record(5, 1, 0.54)]
    assert open_best(records, False, 3) == records[1]  # 2 trained children that lost
    records.append(record(6, 1, 0.4))
    assert best_of(records) == records[1]  # still the run's best
    assert open_best(records, False, 3) == records[2]  # passed over for the next best
    assert open_best(records, False, 4) == open_best(records, False, 0) == records[1]
    config = build_config({}, {"search": "discover", "parent_patience": 3})
    search = Search(config, resolve_dataset("digits", None), None, None, None, Progress())  # type: ignore[arg-type]
    assert search.request(7, records)[1] == 2
    plain = Search(build_config({}, {}), search.task, None, None, None, Progress())  # type: ignore[arg-type]
    assert plain.request(7, records)[1] == 1
