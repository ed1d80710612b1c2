"""``promote``: after the search, its best candidates are trained again for longer, as
records of their own that the search's choices never see (lemo_nade.promotion)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lemo_nade import promotion, search
from lemo_nade.config import ConfigError, build_config, config_from_json
from lemo_nade.history import IterationRecord, elapsed_s, searched
from lemo_nade.records import EvalJob, Evaluation, Metrics, Status
from lemo_nade.reporting.data import instructions_text
from lemo_nade.reporting.rows import iteration_rows, llm_summary, run_summary
from lemo_nade.search import Progress, run_search
from lemo_nade.stops import Stop, StopReason
from lemo_nade.store import RunStore
from test_search import Clock, ScriptedArchitect, ScriptedEvaluator, architect, new_run

__all__ = ["architect"]  # the fixture, imported for its name


def test_the_best_candidates_train_again_for_longer_after_the_search(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    run_dir = new_run(tmp_path, iterations=4, epochs=3, search="discover", promote=2)
    evaluate = ScriptedEvaluator(0.5, 0.7, 0.6, 0.65, 0.9, 0.6)
    seen: list[tuple[int, int, int]] = []
    progress = Progress(on_promote=lambda idx, cand, epochs: seen.append((idx, cand, epochs)))
    result = run_search(run_dir, progress, evaluate=evaluate)
    records = result.records
    assert len(records) == 6 and result.stop == Stop(StopReason.ITERATIONS)
    assert [r.promoted for r in records] == [False] * 4 + [True] * 2
    assert [(r.parent_idx, r.epochs) for r in records[4:]] == [(1, 6), (3, 6)]  # best first
    assert seen == [(4, 1, 6), (5, 3, 6)]
    assert [job.epochs for job, _ in evaluate.jobs] == [3, 3, 3, 3, 6, 6]
    assert evaluate.jobs[4][0].code == records[1].code and records[4].code == records[1].code
    assert evaluate.jobs[4][1] == 2 * evaluate.jobs[0][1]  # twice the epochs, twice the limit
    assert len(architect.requests) == 4  # a promotion asks the architect nothing
    assert result.best is not None and result.best.idx == 4  # the run's best is chosen among all
    rows = iteration_rows(records)
    assert [row["promotion_epochs"] for row in rows] == [None] * 4 + [6, 6]
    assert instructions_text(records[4]) == "(promotion: 6 epochs)"
    assert "candidate 1 trained again for 6 epochs" in records[4].notes
    assert llm_summary(records)["attempts"] == 4  # promotions are no answers
    with RunStore.open(run_dir) as st:
        assert st.status() == ("finished", "iterations")
        summary = run_summary(records, config_from_json(st.config_json()))
    assert (summary["iterations"], summary["promotions"], summary["best_iteration"]) == (4, 2, 4)


def test_without_promote_the_run_ends_with_its_search(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    run_dir = new_run(tmp_path, iterations=3, search="discover", promote=0)
    records = run_search(run_dir, evaluate=ScriptedEvaluator()).records
    assert len(records) == 3 and not any(r.promoted for r in records)


def test_a_resume_promotes_what_is_left_and_more_iterations_search_from_search_candidates(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    run_dir = new_run(tmp_path, iterations=3, search="discover", promote=2)

    def stopped_at_second_promotion(job: EvalJob, timeout_s: float, mem: int | None) -> Evaluation:
        if len(scripted.jobs) == 4:
            raise KeyboardInterrupt
        return scripted(job, timeout_s, mem)

    scripted = ScriptedEvaluator(0.5, 0.7, 0.6, 0.99)
    with pytest.raises(KeyboardInterrupt):
        run_search(run_dir, evaluate=stopped_at_second_promotion)
    evaluate = ScriptedEvaluator(0.55)
    records = run_search(run_dir, evaluate=evaluate).records
    assert [r.parent_idx for r in records if r.promoted] == [1, 2]  # 1 before the stop
    assert len(evaluate.jobs) == 1 and evaluate.jobs[0][0].epochs == 2
    evaluate = ScriptedEvaluator(0.8, 0.75, 0.5, 0.5)
    more = run_search(run_dir, evaluate=evaluate, extend={"iterations": 5}).records
    new = more[len(records) :]
    assert [r.promoted for r in new] == [False, False, True, True]
    # the promoted 0.99 is the run's best, but the search goes on from its own best (0.7)
    assert new[0].parent_idx == 1 and new[1].parent_idx == 5
    assert [r.parent_idx for r in new[2:]] == [5, 6]  # the new top two, best first
    assert len(architect.requests) == 5


def test_with_max_hours_the_search_stops_in_time_for_its_promotions(
    tmp_path: Path, architect: ScriptedArchitect, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = new_run(tmp_path, iterations=100, search="discover", promote=2, max_hours=1.0)
    monkeypatch.setattr(search, "time", Clock(step_s=50.0))

    def slow(job: EvalJob, timeout_s: float, mem: int | None) -> Evaluation:
        a2 = 0.5 + 0.01 * len(calls)
        calls.append(timeout_s)
        metrics = Metrics(A1=a2, A2=a2, E1=1e-6, E2=0.0, F=1000.0, P=1000)
        return Evaluation(Status.OK, metrics, wall_time_s=300.0)

    calls: list[float] = []
    result = run_search(run_dir, evaluate=slow)
    records = result.records
    cfg = build_config({"iterations": 100, "epochs": 1, "promote": 2, "max_hours": 1.0})
    own = searched(records)
    assert [r.promoted for r in records[-2:]] == [True, True] and len(records) == len(own) + 2
    assert promotion.reserve_s(cfg, own) == 2 * 300.0 * 2  # two, each 300 s x 2 epochs/1
    assert promotion.time_to_promote(cfg, own)  # the search stopped when it had to
    assert not promotion.time_to_promote(cfg, own[:-1])  # and not before
    assert elapsed_s(records) < 3600 and result.stop == Stop(StopReason.MAX_HOURS)


def test_the_chosen_are_the_best_by_cm_one_per_code_the_earlier_on_a_tie() -> None:
    from test_store import make_record

    def rec(idx: int, cm: float | None, code: str, promotes: int | None = None) -> IterationRecord:
        epochs = None if promotes is None else 9
        return replace(make_record(idx), cm=cm, code=code, parent_idx=promotes, epochs=epochs)

    records = [rec(0, 0.5, "a"), rec(1, 0.9, "b"), rec(2, 0.9, "c"), rec(3, 0.95, "b")]
    records += [rec(4, None, "d"), rec(5, 2.0, "b", promotes=3)]
    assert [r.idx for r in promotion.chosen(records, 3)] == [3, 2, 0]  # 1: the code of 3
    assert [r.idx for r in promotion.chosen(records[:3], 1)] == [1]  # the earlier of a tie
    assert [r.idx for r in promotion.pending(records, 2)] == [2]  # 3 was promoted (as 5)
    assert searched(records) == records[:5]


def test_promote_epochs_must_train_longer_and_the_presets() -> None:
    assert build_config({"epochs": 4}).promotion_epochs == 8
    assert build_config({"epochs": 4, "promote_epochs": 5}).promotion_epochs == 5
    with pytest.raises(ConfigError, match="promote_epochs must be more than epochs"):
        build_config({"epochs": 4, "promote_epochs": 4})
    assert build_config({"search": "paper"}).promote == 0


def test_a_promotion_gets_its_own_limit_or_at_least_three_times_its_estimate() -> None:
    from test_store import make_record

    cfg = build_config({"epochs": 1, "promote": 1, "max_hours": 1.0})  # limit 600 s x 2
    candidate = replace(make_record(0), started_at=0.0, finished_at=3500.0)
    candidate = replace(
        candidate, evaluation=replace(candidate.evaluation, wall_time_s=100.0)
    )  # estimate: 200 s
    assert promotion.estimate_s(cfg, candidate) == 200.0
    assert promotion.time_limit(cfg, [candidate], candidate) == (600.0, True)  # 100 s left
    early = replace(candidate, finished_at=100.0)  # 3500 s left: its own limit
    assert promotion.time_limit(cfg, [early], early) == (1200.0, False)
    endless = build_config({"epochs": 1, "promote": 1})
    assert promotion.time_limit(endless, [candidate], candidate) == (1200.0, False)
