"""Algorithm 1's loop with a scripted architect and a scripted evaluator: no sandbox, no
torch, milliseconds per test. Stop reasons, parent choice, repairs, the budget cut, the
data error, the architect going away, and resume."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lemo_nade import runs, search
from lemo_nade.architects import ArchitectUnavailable
from lemo_nade.config import build_config
from lemo_nade.records import EvalJob, Evaluation, Metrics, Proposal, ProposalRequest, Status
from lemo_nade.search import Progress, SearchResult, Stop, StopReason, run_search
from lemo_nade.store import RunStore
from lemo_nade.usage import Usage

Step = Proposal | Exception


class ScriptedArchitect:
    """Answers each request from ``script`` (a Proposal, or an exception to raise), then
    with a fresh candidate named after the request; keeps every request it was sent."""

    name = "scripted"

    def __init__(self) -> None:
        self.script: list[Step] = []
        self.usage: Usage | None = None
        self.requests: list[ProposalRequest] = []

    def propose(self, request: ProposalRequest) -> Proposal:
        self.requests.append(request)
        step = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        made = (request.iteration, request.attempt)  # another program each time
        code = f"# candidate {made[0]}.{made[1]}\nclass Net:\n    made = {made}\n"
        return step or Proposal(code=code, notes=f"made {request.iteration}", usage=self.usage)


class ScriptedEvaluator:
    """Evaluates each job as ``script`` says (an accuracy, a Status or an Evaluation),
    then as a good candidate; ``kwh`` is what each good one spends."""

    def __init__(self, *script: float | Status | Evaluation, kwh: float = 1e-6) -> None:
        self.script = list(script)
        self.kwh = kwh
        self.jobs: list[tuple[EvalJob, float]] = []

    def __call__(self, job: EvalJob, timeout_s: float, memory_limit_mb: int | None) -> Evaluation:
        self.jobs.append((job, timeout_s))
        step = self.script.pop(0) if self.script else 0.8
        if isinstance(step, Evaluation):
            return step
        if isinstance(step, Status):
            return Evaluation(step, error=f"Traceback\n{step.value}: it broke", wall_time_s=0.01)
        metrics = Metrics(A1=step, A2=step, E1=self.kwh, E2=0.0, F=1000.0, P=1000)
        return Evaluation(Status.OK, metrics, wall_time_s=0.01)


class Clock:
    """``time.time`` for the loop: each reading is ``step_s`` after the last."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 1_000_000.0, step_s

    def time(self) -> float:
        self.now += self.step_s
        return self.now


@pytest.fixture
def architect(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedArchitect]:
    fake = ScriptedArchitect()
    monkeypatch.setattr(runs, "architect_for", lambda config, check=False: fake)
    yield fake


def new_run(tmp_path: Path, **settings: Any) -> Path:
    return runs.create_run(
        build_config(
            {"iterations": 3, "epochs": 1, "dataset": "digits", "search": "paper", **settings}
        ),
        tmp_path,
    )


def stored(run_dir: Path) -> tuple[tuple[str, str], list[str]]:
    with RunStore.open(run_dir) as st:
        return st.status(), [kind for _, kind, _ in st.events()]


def test_the_run_ends_after_its_iterations_each_child_of_the_last(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    run_dir = new_run(tmp_path)
    result = run_search(run_dir, evaluate=ScriptedEvaluator(0.7, 0.8, 0.75))
    assert result.stop == Stop(StopReason.ITERATIONS) and result.stop_reason == "iterations"
    assert [r.idx for r in result.records] == [0, 1, 2] and result.exit_code == 0
    assert [r.parent_idx for r in result.records] == [None, 0, 1]
    assert result.best is not None and result.best.idx == 1
    assert [r.iteration for r in architect.requests] == [0, 1, 2]
    first, second, _ = architect.requests
    assert first.parent_code is None and first.instructions == ()
    assert second.parent_code == result.records[0].code
    assert second.instructions == result.records[0].resolved_instructions != ()
    assert all(r.cm is not None and r.usage is None for r in result.records)
    assert stored(run_dir)[0] == ("finished", "iterations")


@pytest.mark.parametrize(
    ("budget", "value"),
    [
        ("max_hours", 0.75),  # each iteration takes half an hour on the clock
        ("max_energy_kwh", 1.5e-6),  # each candidate spends 1e-6 kWh
        ("max_tokens", 150),  # each answer costs 100 tokens
        ("max_cost_usd", 1.0),  # and $0.5
    ],
)
def test_each_budget_stops_the_run_between_iterations(
    tmp_path: Path,
    architect: ScriptedArchitect,
    monkeypatch: pytest.MonkeyPatch,
    budget: str,
    value: float,
) -> None:
    architect.usage = Usage(calls=1, total_tokens=100, cost_usd=0.5)
    run_dir = new_run(tmp_path, iterations=5, **{budget: value})
    monkeypatch.setattr(search, "time", Clock(step_s=1800.0))
    result = run_search(run_dir, evaluate=ScriptedEvaluator())
    assert result.stop == Stop(StopReason(budget)) and result.stop.budget
    assert len(result.records) == 2 and result.exit_code == 0
    status, events = stored(run_dir)
    assert status == ("stopped", budget) and events[-1] == "stopped"


@pytest.mark.parametrize(("parent", "want"), [("last", 1), ("best", 0)])
def test_the_parent_is_the_last_or_the_best_good_candidate(
    tmp_path: Path, architect: ScriptedArchitect, parent: str, want: int
) -> None:
    run_dir = new_run(tmp_path, parent=parent, iterations=4, max_repairs=0)
    evaluate = ScriptedEvaluator(0.9, 0.5, Status.FAILED_TRAIN, 0.7)
    result = run_search(run_dir, evaluate=evaluate)
    records = result.records
    assert [r.status for r in records] == [Status.OK, Status.OK, Status.FAILED_TRAIN, Status.OK]
    assert records[1].cm is not None and records[0].cm is not None
    assert records[0].cm > records[1].cm and records[2].cm is None
    assert [r.parent_idx for r in records] == [None, 0, want, want]
    after_failure = architect.requests[3]
    assert after_failure.parent_code == records[want].code
    assert after_failure.instructions == records[want].resolved_instructions
    assert after_failure.last_error is not None and "it broke" in after_failure.last_error
    assert after_failure.failed_code == records[2].code
    assert architect.requests[2].last_error is None  # the one before came out fine


def test_what_never_trained_is_repaired_and_every_attempt_is_kept(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    architect.usage = Usage(calls=1, prompt_tokens=7, total_tokens=10, cost_usd=None)
    run_dir = new_run(tmp_path, iterations=1, max_repairs=2)
    evaluate = ScriptedEvaluator(Status.FAILED_BUILD, Status.FAILED_SHAPE, 0.8)
    (record,) = run_search(run_dir, evaluate=evaluate).records
    assert [a.status for a in record.attempts] == [
        Status.FAILED_BUILD,
        Status.FAILED_SHAPE,
        Status.OK,
    ]
    assert [a.attempt for a in record.attempts] == [0, 1, 2]
    assert record.status is Status.OK and record.code == record.attempts[-1].code
    assert [r.attempt for r in architect.requests] == [0, 1, 2]
    assert [len(r.history) for r in architect.requests] == [0, 1, 2]
    assert "failed_build: it broke" in architect.requests[1].history[0][1]
    assert record.usage == Usage(calls=3, prompt_tokens=21, total_tokens=30, cost_usd=None)
    with RunStore.open(run_dir) as st:
        assert st.iterations()[0].attempts == record.attempts


def test_repairs_end_at_max_repairs_and_at_a_failure_that_trained(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    run_dir = new_run(tmp_path, iterations=2, max_repairs=2)
    evaluate = ScriptedEvaluator(*[Status.FAILED_BUILD] * 3, Status.FAILED_SHAPE, Status.OOM)
    first, second = run_search(run_dir, evaluate=evaluate).records
    assert [a.status for a in first.attempts] == [Status.FAILED_BUILD] * 3
    assert first.status is Status.FAILED_BUILD and first.cm is None
    assert [a.status for a in second.attempts] == [Status.FAILED_SHAPE, Status.OOM]
    assert second.status is Status.OOM and len(evaluate.jobs) == 5


def test_an_answer_without_code_is_not_evaluated_but_is_repaired(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    architect.script = [Proposal(code="", answer="use more layers", rejected="no code block")]
    run_dir = new_run(tmp_path, iterations=1, max_repairs=1)
    evaluate = ScriptedEvaluator()
    (record,) = run_search(run_dir, evaluate=evaluate).records
    assert [a.status for a in record.attempts] == [Status.FAILED_EXTRACT, Status.OK]
    assert record.attempts[0].code == "use more layers"
    assert record.attempts[0].error == "no code block" and len(evaluate.jobs) == 1


def test_a_timeout_cut_by_the_time_budget_records_nothing(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    run_dir = new_run(tmp_path, max_hours=0.01, candidate_timeout_s=600)  # 36 s left < 600
    evaluate = ScriptedEvaluator(0.8, Status.TIMEOUT)
    result = run_search(run_dir, evaluate=evaluate)
    assert result.stop == Stop(StopReason.MAX_HOURS) and len(result.records) == 1
    assert evaluate.jobs[1][1] < 36  # the time left, not the candidate's own limit
    with RunStore.open(run_dir) as st:
        cuts = [data for _, kind, data in st.events() if kind == "budget_cut"]
        assert st.status() == ("stopped", "max_hours") and st.next_index() == 1
    assert [c["iteration"] for c in cuts] == [1]


def test_a_timeout_within_the_candidates_own_limit_is_its_failure(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    run_dir = new_run(tmp_path, iterations=2)
    result = run_search(run_dir, evaluate=ScriptedEvaluator(Status.TIMEOUT))
    assert [r.status for r in result.records] == [Status.TIMEOUT, Status.OK]
    assert result.stop.reason is StopReason.ITERATIONS and "budget_cut" not in stored(run_dir)[1]


def test_a_budget_cut_with_no_candidate_yet_exits_1(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    run_dir = new_run(tmp_path, max_hours=0.01)
    result = run_search(run_dir, evaluate=ScriptedEvaluator(Status.TIMEOUT))
    assert result.records == [] and result.best is None and result.exit_code == 1


def test_a_data_error_records_nothing_and_exits_2(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    error = "Traceback (most recent call last):\nlemo_nade.DatasetError: data_batch_2 is corrupt"
    run_dir = new_run(tmp_path, max_repairs=2)
    failed = Evaluation(Status.FAILED_DATA, error=error)
    result = run_search(run_dir, evaluate=ScriptedEvaluator(0.8, Status.FAILED_BUILD, failed))
    assert result.stop == Stop(StopReason.DATA_ERROR, "data_batch_2 is corrupt")
    assert len(result.records) == 1 and result.exit_code == 2  # the repaired attempt too
    assert result.stop.external and not result.stop.budget
    assert stored(run_dir)[0] == ("stopped", "data_error: data_batch_2 is corrupt")


def test_the_architect_going_away_keeps_the_attempts_made_then_resume_goes_on(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    architect.script = [
        Proposal(code="", answer="hmm", rejected="no code block"),
        ArchitectUnavailable("endpoint: still failing (HTTP 503)"),
    ]
    run_dir = new_run(tmp_path, iterations=2, max_repairs=2)
    result = run_search(run_dir, evaluate=ScriptedEvaluator())
    (record,) = result.records
    assert [a.status for a in record.attempts] == [Status.FAILED_EXTRACT]
    assert result.stop_reason == "llm_unavailable: endpoint: still failing (HTTP 503)"
    assert result.exit_code == 1 and result.stop.external
    assert stored(run_dir)[0] == ("stopped", result.stop_reason)
    resumed = run_search(run_dir, evaluate=ScriptedEvaluator())
    assert [r.idx for r in resumed.records] == [0, 1] and resumed.exit_code == 0
    assert architect.requests[-1].iteration == 1 and architect.requests[-1].last_error


def test_the_architect_going_away_at_once_records_nothing(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    architect.script = [ArchitectUnavailable("gone")]
    run_dir = new_run(tmp_path)
    result = run_search(run_dir, evaluate=ScriptedEvaluator())
    assert result.records == [] and result.stop == Stop(StopReason.LLM_UNAVAILABLE, "gone")


def test_resume_replays_the_records_and_goes_on_at_the_next_index(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    run_dir = new_run(tmp_path, iterations=2)
    before = run_search(run_dir, evaluate=ScriptedEvaluator(0.7, 0.9)).records
    architect.requests.clear()
    after = run_search(run_dir, evaluate=ScriptedEvaluator(), extend={"iterations": 4}).records
    assert [r.idx for r in after] == [0, 1, 2, 3] and after[:2] == before
    assert [r.iteration for r in architect.requests] == [2, 3]
    assert architect.requests[0].parent_code == before[1].code
    assert architect.requests[0].instructions == before[1].resolved_instructions
    status, events = stored(run_dir)
    assert status == ("finished", "iterations")
    assert events.count("resumed") == 1 and "config_changed" in events


def test_progress_sees_each_iteration_and_the_best_so_far(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    seen: list[tuple[str, int, int | None]] = []
    progress = Progress(
        on_start=lambda idx, req: seen.append(("start", idx, None)),
        on_evaluating=lambda idx, proposal: seen.append(("evaluating", idx, None)),
        on_end=lambda rec, best: seen.append(("end", rec.idx, best.idx if best else None)),
    )
    run_search(new_run(tmp_path, iterations=2), progress, ScriptedEvaluator(0.9, 0.5))
    assert seen == [
        ("start", 0, None),
        ("evaluating", 0, None),
        ("end", 0, 0),
        ("start", 1, None),
        ("evaluating", 1, None),
        ("end", 1, 0),
    ]


def test_ctrl_c_marks_the_run_interrupted_and_keeps_what_was_done(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    def interrupted(job: EvalJob, timeout_s: float, memory_limit_mb: int | None) -> Evaluation:
        if architect.requests[-1].iteration == 1:
            raise KeyboardInterrupt
        return ScriptedEvaluator()(job, timeout_s, memory_limit_mb)

    run_dir = new_run(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_search(run_dir, evaluate=interrupted)
    with RunStore.open(run_dir) as st:
        assert st.status() == ("stopped", "interrupted") and st.next_index() == 1


def test_an_unexpected_error_never_leaves_the_run_running(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    """A bug of ours while a run goes on (e.g. a record the store refuses) stops it with
    the error on record; what was committed stays."""

    def broken(job: EvalJob, timeout_s: float, memory_limit_mb: int | None) -> Evaluation:
        if architect.requests[-1].iteration == 1:
            raise RuntimeError("boom [/] \x1b[2J")
        return ScriptedEvaluator()(job, timeout_s, memory_limit_mb)

    run_dir = new_run(tmp_path)
    with pytest.raises(RuntimeError):
        run_search(run_dir, evaluate=broken)
    with RunStore.open(run_dir) as st:
        status, reason = st.status()
        assert status == "stopped" and reason.startswith("error: RuntimeError: boom")
        assert st.next_index() == 1


def test_stop_reasons_read_as_stored_and_set_the_exit_code(tmp_path: Path) -> None:
    assert str(Stop(StopReason.MAX_TOKENS)) == "max_tokens"
    assert str(Stop(StopReason.LLM_UNAVAILABLE, "down")) == "llm_unavailable: down"
    assert str(Stop(StopReason.DATA_ERROR, "bad file")) == "data_error: bad file"
    assert {r.value for r in StopReason if Stop(r).budget} == set(runs.BUDGETS)
    best = object()
    codes = {
        reason: SearchResult(tmp_path, [], best, Stop(reason)).exit_code for reason in StopReason
    }
    assert codes[StopReason.DATA_ERROR] == 2 and codes[StopReason.LLM_UNAVAILABLE] == 1
    assert all(code == 0 for r, code in codes.items() if not Stop(r).external)
    assert SearchResult(tmp_path, [], None, Stop(StopReason.ITERATIONS)).exit_code == 1


def test_the_loop_and_its_records_import_no_torch() -> None:
    modules = "search, runs, history, usage, records, store, store.codec, store.migrations"
    imports = ", ".join(f"lemo_nade.{m.strip()}" for m in modules.split(","))
    code = f"import sys, {imports}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_measured_child_carries_whether_it_followed_its_instructions(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    """The loop judges each measured child against its parent (their stored structures
    and code) and commits the verdicts with it; the first candidate and a failed one
    get none."""

    def measured(conv_layers: int) -> Evaluation:
        structure = {"conv_layers": conv_layers, "skip_connections": 0, "dense_layers": 1}
        metrics = Metrics(A1=0.5, A2=0.5, E1=1e-6, E2=0.0, F=1000.0, P=1000, structure=structure)
        return Evaluation(Status.OK, metrics, wall_time_s=0.01)

    run_dir = new_run(tmp_path)
    evaluate = ScriptedEvaluator(measured(1), measured(2), Status.FAILED_TRAIN)
    records = run_search(run_dir, evaluate=evaluate).records
    asked = records[0].resolved_instructions
    assert "ACL" in dict(asked)  # A1 and A2 under their thresholds
    verdicts = records[1].evaluation.compliance
    assert [v.code for v in verdicts] == [code for code, _ in asked]
    assert ("ACL", "followed", "conv layers 1 -> 2") in verdicts
    assert records[0].evaluation.compliance == () == records[2].evaluation.compliance
    with RunStore.open(run_dir) as st:
        assert st.iterations()[1].evaluation.compliance == verdicts
