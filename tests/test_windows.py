"""Which instructions a request carries with ``max_instructions`` set (history.asked):
the first window for a parent's first child; after a child of the same parent that failed
or did not beat it, the next window; all of them for the paper's loop."""

from __future__ import annotations

from dataclasses import replace

from lemo_nade.history import asked
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
