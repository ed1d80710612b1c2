"""The discovery loop, paper Algorithm 1, with the run store as its memory.

Every iteration (:meth:`Search.iterate`): build the request from the parent (the last or
the best good candidate: its code and resolved instructions, and the last error if the
previous candidate failed), let the architect propose code and evaluate it in the
sandbox, repairing what never got to train (:meth:`Search.propose`), judge it (the next
instructions, Algorithm 2 -> 3, and CM, Eq. 1) and commit it all in one transaction.
After the search, its best candidates train again for longer (:mod:`.promotion`).
Resuming is replaying the committed iterations: the loop keeps no state the store does
not have, so a crash loses at most the iteration in flight.

Expected endings are values, not exceptions: each step returns a :class:`Stop` when the
run cannot go on (a budget, the data, the architect), and the loop returns it.

Pure main-process side: no torch import (the sandbox child does the training).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lemo_nade import compliance, promotion, prompts, rules, runs, sandbox
from lemo_nade.architects import Architect, ArchitectUnavailable
from lemo_nade.config import RunConfig, config_from_json
from lemo_nade.datasets import resolve_dataset
from lemo_nade.history import (
    Attempt,
    IterationRecord,
    asked,
    best_of,
    budget_usage,
    elapsed_s,
    moved_on,
    open_best,
    searched,
    trained_before,
    was_asked,
)
from lemo_nade.records import EvalJob, Evaluation, Proposal, ProposalRequest, Status, TaskSpec
from lemo_nade.resize import resized
from lemo_nade.score import combined_effectiveness
from lemo_nade.stops import Stop, StopReason, data_error
from lemo_nade.store import RunStore
from lemo_nade.usage import LLMCall, sum_usage

Evaluator = Callable[[EvalJob, float, "int | None"], Evaluation]


@dataclass(frozen=True)
class Progress:
    """Callbacks for a live display; all optional."""

    on_start: Callable[[int, ProposalRequest], None] = lambda idx, req: None
    on_evaluating: Callable[[int, Proposal], None] = lambda idx, proposal: None
    on_end: Callable[[IterationRecord, IterationRecord | None], None] = lambda rec, best: None
    on_promote: Callable[[int, int, int], None] = lambda idx, candidate, epochs: None


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    records: list[IterationRecord]
    best: IterationRecord | None
    stop: Stop

    @property
    def stop_reason(self) -> str:
        """The stop as stored with the run (``str(stop)``)."""
        return str(self.stop)

    @property
    def exit_code(self) -> int:
        """What ``lemo-nade run`` exits with (a sweep counts non-zero as failed): 2 when
        the data could not be read, 1 when the LLM went away or no candidate succeeded."""
        if self.stop.reason is StopReason.DATA_ERROR:
            return 2
        if self.stop.reason is StopReason.LLM_UNAVAILABLE or self.best is None:
            return 1
        return 0


def run_search(
    run_dir: Path,
    progress: Progress | None = None,
    evaluate: Evaluator | None = None,
    extend: dict[str, Any] | None = None,
) -> SearchResult:
    """Run (or continue) the search in ``run_dir`` until a termination condition holds.

    ``evaluate`` trains and measures one candidate (default: the sandbox). ``extend``
    changes the run's length or budgets first (keys in ``runs.EXTENDABLE``), so a
    finished or budget-stopped run can go on; the change is stored with the run.
    """
    progress = progress or Progress()
    with RunStore.open(run_dir, writer=True) as store:
        config = config_from_json(store.config_json())
        records = store.iterations()
        if extend:
            config = runs.extend_config(config, extend, len(searched(records)), store)
        task = resolve_dataset(config.dataset, config.data_dir)
        architect = runs.architect_for(config, check=True)
        if records:
            store.add_event("resumed", {"at_iteration": len(records)})
        store.set_status("running")
        try:
            with evaluator(evaluate) as evaluate_one:
                stop = Search(config, task, architect, store, evaluate_one, progress).run(records)
        except KeyboardInterrupt:
            store.set_status("stopped", "interrupted")
            raise
        except Exception as exc:  # a bug of ours: the run must not read "running" forever
            store.set_status("stopped", f"error: {type(exc).__name__}: {exc}"[:500])
            raise
        done = stop.reason is StopReason.ITERATIONS
        store.set_status("finished" if done else "stopped", str(stop))
        store.add_event("stopped", {"reason": str(stop)})
        records = store.iterations()
        return SearchResult(run_dir, records, best_of(records), stop)


@contextmanager
def evaluator(given: Evaluator | None) -> Iterator[Evaluator]:
    """THE choice of the default evaluator, held for the whole loop: the caller's, else
    the sandbox. A run that owns its sandbox (a fork server) starts and stops it here."""
    with sandbox.Sandbox() as box:  # its fork server starts with the first candidate only
        yield given if given is not None else box.evaluate


@dataclass(frozen=True)
class Tried:
    """What :meth:`Search.propose` ended with: every attempt evaluated, the LLM calls,
    the last (proposal, evaluation), and why the run stops, if it must. No ``last`` means
    nothing is to be recorded."""

    attempts: tuple[Attempt, ...] = ()
    calls: tuple[LLMCall, ...] = ()
    last: tuple[Proposal, Evaluation] | None = None
    stop: Stop | None = None
    request: ProposalRequest | None = None  # the last attempt's (its instructions may differ)


@dataclass(frozen=True)
class Judgement:
    """Algorithm 1, lines 14-16, for a candidate that trained: the raw and resolved next
    instructions and CM; a failed candidate gets none of them."""

    raw: dict[str, float] = field(default_factory=dict)
    resolved: tuple[tuple[str, float], ...] = ()
    cm: float | None = None


@dataclass
class Search:
    """Algorithm 1 over one run: the config, the task, the architect, the evaluator and
    the store; each iteration is committed to the store before the next begins."""

    config: RunConfig
    task: TaskSpec
    architect: Architect
    store: RunStore
    evaluate: Evaluator
    progress: Progress

    def run(self, records: list[IterationRecord]) -> Stop:
        """Iterate after the committed ``records`` until the search is over, then promote
        its best candidates (:mod:`lemo_nade.promotion`) unless a budget is spent."""
        records = list(records)
        while True:
            over = self.termination(records)
            if over is None:
                record, stop = self.iterate(len(records), records)
            elif self.termination(records, promoting=True) is None and (
                todo := promotion.pending(records, self.config.promote)
            ):
                record, stop = self.promote(len(records), todo[0], records)
            else:
                return over
            if record is not None:
                records.append(record)
            if stop is not None:
                return stop

    def termination(self, records: list[IterationRecord], promoting: bool = False) -> Stop | None:
        """Termination condition (Algorithm 1, line 21): ``iterations`` search candidates
        or whichever budget ends first. While not ``promoting``, the search also ends
        when the time left in ``max_hours`` is what the promotions need."""
        cfg = self.config
        if not promoting and len(searched(records)) >= cfg.iterations:
            return Stop(StopReason.ITERATIONS)
        for key, used in budget_usage(records).items():  # max_hours first, as before
            limit = getattr(cfg, key)
            if limit is not None and used >= limit:
                return Stop(StopReason(key))
        if not promoting and promotion.time_to_promote(cfg, records):
            return Stop(StopReason.MAX_HOURS)
        return None

    def iterate(
        self, idx: int, records: list[IterationRecord]
    ) -> tuple[IterationRecord | None, Stop | None]:
        """One iteration: request -> propose (with repairs) -> judge -> record. Returns
        the committed record (None when nothing is to be kept) and why the run stops, if
        it must: the architect going away after some attempts stops it after they are
        committed; the data or the time budget stops it with nothing recorded."""
        started = time.time()
        request, parent_idx = self.request(idx, records)
        self.progress.on_start(idx, request)
        parent = next((r for r in records if r.idx == parent_idx), None)
        tried = self.propose(request, records, parent.resolved_instructions if parent else ())
        if tried.last is None:
            return None, tried.stop
        judged = self.judge(tried.last[1])
        record = self.record(tried.request or request, parent_idx, started, tried, judged)
        self.progress.on_end(record, best_of([*records, record]))
        return record, tried.stop

    def promote(
        self, idx: int, candidate: IterationRecord, records: list[IterationRecord]
    ) -> tuple[IterationRecord | None, Stop | None]:
        """Train ``candidate``'s code again for ``promote_epochs``, as an iteration of its
        own (judged and recorded like any candidate); a stop when the time budget cut it."""
        started, epochs = time.time(), self.config.promotion_epochs
        self.progress.on_promote(idx, candidate.idx, epochs)
        job = replace(runs.search_job(self.config, candidate.code), epochs=epochs)
        limit, capped = promotion.time_limit(self.config, records, candidate)
        evaluation = self.evaluate(job, limit, self.config.memory_limit_mb)
        cut = self.not_the_candidates_fault(idx, evaluation, capped)
        if cut is not None:
            return None, cut
        request, proposal = promotion.asked(idx, self.task, candidate, self.config)
        tried = Tried((Attempt.of(0, proposal, evaluation),), (), (proposal, evaluation))
        judged = self.judge(evaluation)
        record = self.record(request, candidate.idx, started, tried, judged, epochs)
        self.progress.on_end(record, best_of([*records, record]))
        return record, None

    def request(
        self, idx: int, records: list[IterationRecord]
    ) -> tuple[ProposalRequest, int | None]:
        """Algorithm 1, line 8's command: the parent's instructions, plus the last error.
        Only the search's own candidates count, never a promotion."""
        records = searched(records)
        good = [r for r in records if r.evaluation.status is Status.OK]
        best = open_best(records, self.config.pass_spent, self.config.parent_patience)
        parent = (best if self.config.parent == "best" else None) or (good[-1] if good else None)
        last = records[-1] if records else None
        failed = last if last is not None and last.evaluation.status is not Status.OK else None
        instructions = (
            asked(records, parent, self.config.max_instructions, self.config.lineage_memory)
            if parent
            else ()
        )
        request = ProposalRequest(
            iteration=idx,
            task=self.task,
            parent_code=parent.code if parent else None,
            parent_metrics=parent.evaluation.metrics if parent else None,
            instructions=instructions,
            asked_before=parent is not None and was_asked(records, parent, instructions),
            last_error=failed.evaluation.error if failed else None,
            parent_state=parent.state if parent else None,
            seed=self.config.seed,
            failed_code=failed.code if failed else None,
        )
        return request, parent.idx if parent else None

    def propose(
        self,
        request: ProposalRequest,
        records: list[IterationRecord],
        resolved: tuple[tuple[str, float], ...] = (),
    ) -> Tried:
        """Propose and evaluate; while the code never got to train (no code, syntax,
        policy, build or shape failure: ``prompts.REPAIRABLE``) send the error back for a
        repair, up to ``max_repairs`` times. Every attempt is kept. With
        ``max_instructions`` set, an answer that changed nothing moves the request on to
        the next of the parent's ``resolved`` instructions (:func:`history.moved_on`)."""
        attempts: list[Attempt] = []
        calls: list[LLMCall] = []
        history: list[tuple[str, str]] = []
        last: tuple[Proposal, Evaluation] | None = None
        for number in range(self.config.max_repairs + 1):
            try:
                proposal = self.architect.propose(
                    replace(request, attempt=number, history=tuple(history))
                )
            except ArchitectUnavailable as exc:
                stop = Stop(StopReason.LLM_UNAVAILABLE, str(exc))
                return Tried(tuple(attempts), tuple(calls), last, stop)
            self.progress.on_evaluating(request.iteration, proposal)
            evaluation = self.evaluate_proposal(proposal, records)
            proposal, evaluation = resized(
                proposal, evaluation, lambda p: self.evaluate_proposal(p, records)
            )
            capped = self.cut_by_time_budget(records)
            cut = self.not_the_candidates_fault(request.iteration, evaluation, capped)
            if cut is not None:
                return Tried(stop=cut)
            last = (proposal, evaluation)
            calls.extend(proposal.calls)
            attempts.append(Attempt.of(number, proposal, evaluation))
            if evaluation.status not in prompts.REPAIRABLE:
                break
            history.append((proposal.answer or prompts.fence(proposal.code), evaluation.error))
            if evaluation.status is Status.DUPLICATE:  # the offline architects then explore
                request = replace(request, failed_code=proposal.code)
            elif prompts.stuck(evaluation.error) and number < self.config.max_repairs:
                request = moved_on(request, resolved, self.config.max_instructions)
        return Tried(tuple(attempts), tuple(calls), last, request=request)

    def not_the_candidates_fault(
        self, idx: int, evaluation: Evaluation, capped: bool
    ) -> Stop | None:
        """A stop, with nothing recorded, when the candidate did nothing wrong: the
        sandbox could not load the data, or the time left in ``max_hours`` (not the
        candidate's own limit) ran out while it trained; a resume runs it again."""
        if evaluation.status is Status.FAILED_DATA:
            return Stop(StopReason.DATA_ERROR, data_error(evaluation.error))
        if evaluation.status is Status.TIMEOUT and capped:
            self.store.add_event(
                "budget_cut", {"iteration": idx, "wall_time_s": evaluation.wall_time_s}
            )
            return Stop(StopReason.MAX_HOURS)
        return None

    def judge(self, evaluation: Evaluation) -> Judgement:
        """Algorithm 1, lines 14-16: the next instructions (Algorithm 2 -> 3) and CM (Eq. 1)."""
        if evaluation.status is not Status.OK or evaluation.metrics is None:
            return Judgement()
        values = evaluation.metrics.for_rules()
        cfg = self.config
        raw, resolved = rules.instructions_for(
            values, cfg.priorities.model_dump(), cfg.thresholds.model_dump(), cfg.pursue
        )
        cm = combined_effectiveness(values, cfg.thresholds.model_dump(), cfg.weights.model_dump())
        return Judgement(raw, tuple(resolved), cm)

    def record(
        self,
        request: ProposalRequest,
        parent_idx: int | None,
        started: float,
        tried: Tried,
        judged: Judgement,
        epochs: int | None = None,
    ) -> IterationRecord:
        """Commit the iteration: its last attempt is its result, all attempts are kept;
        a measured child carries whether it followed the request's instructions."""
        assert tried.last is not None
        proposal, evaluation = tried.last
        evaluation = compliance.attach(request, proposal.code, evaluation)
        record = IterationRecord(
            idx=request.iteration,
            started_at=started,
            finished_at=time.time(),
            parent_idx=parent_idx,
            architect=self.config.llm,
            prompt_instructions=request.instructions,
            code=proposal.code or proposal.answer,
            state=proposal.state,
            notes=proposal.notes,
            evaluation=evaluation,
            raw_instructions=judged.raw,
            resolved_instructions=judged.resolved,
            cm=judged.cm,
            usage=sum_usage(a.usage for a in tried.attempts),
            attempts=tried.attempts,
            calls=tried.calls,
            epochs=epochs,
        )
        self.store.record_iteration(record)
        return record

    def evaluate_proposal(self, proposal: Proposal, records: list[IterationRecord]) -> Evaluation:
        if proposal.rejected is not None:
            return Evaluation(Status.FAILED_EXTRACT, error=proposal.rejected)
        twin = (
            trained_before(proposal.code, records) if not self.config.retrain_duplicates else None
        )
        if twin is not None:
            a2 = twin.evaluation.metrics.A2 if twin.evaluation.metrics else None
            return Evaluation(Status.DUPLICATE, error=prompts.duplicate_text(twin.idx, a2))
        job = runs.search_job(self.config, proposal.code)
        return self.evaluate(job, self.timeout_s(records), self.config.memory_limit_mb)

    def cut_by_time_budget(self, records: list[IterationRecord]) -> bool:
        """Whether the candidate limit was the time left in ``max_hours``, not its own."""
        return self.timeout_s(records) < self.config.candidate_timeout_s

    def timeout_s(self, records: list[IterationRecord]) -> float:
        """The candidate limit, shortened so a time budget is not overrun by much."""
        limit = self.config.candidate_timeout_s
        if self.config.max_hours is not None:
            left = self.config.max_hours * 3600 - elapsed_s(records)
            limit = max(1.0, min(limit, left))
        return limit
