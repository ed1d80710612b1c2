"""The discovery loop, paper Algorithm 1, with the run store as its memory.

Every iteration: choose the parent (the last or the best good candidate), ask the
architect for code given the parent's resolved instructions (and the last error,
if the previous candidate failed), evaluate it in the sandbox, compute the next
instructions (Algorithm 2 -> 3) and CM (Eq. 1), and commit it all in one
transaction. Resuming is replaying the committed iterations: the loop keeps no
state the store does not have, so a crash loses at most the iteration in flight.

Pure main-process side: no torch import (the sandbox child does the training).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lemo_nade import prompts, rules, sandbox
from lemo_nade.architects import Architect, ArchitectUnavailable, create_architect
from lemo_nade.config import (
    ConfigError,
    RunConfig,
    build_config,
    config_from_json,
    config_json,
)
from lemo_nade.datasets import resolve_dataset
from lemo_nade.records import EvalJob, Evaluation, Proposal, ProposalRequest, Status, TaskSpec
from lemo_nade.score import combined_effectiveness
from lemo_nade.store import IterationRecord, RunStore, new_run_id

Evaluator = Callable[[EvalJob, float, "int | None"], Evaluation]


@dataclass(frozen=True)
class Progress:
    """Callbacks for a live display; all optional."""

    on_start: Callable[[int, ProposalRequest], None] = lambda idx, req: None
    on_evaluating: Callable[[int, Proposal], None] = lambda idx, proposal: None
    on_end: Callable[[IterationRecord, IterationRecord | None], None] = lambda rec, best: None


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    records: list[IterationRecord]
    best: IterationRecord | None
    stop_reason: str

    @property
    def exit_code(self) -> int:
        """What ``lemo-nade run`` exits with (a sweep counts non-zero as failed): 2 when
        the data could not be read, 1 when the LLM went away or no candidate succeeded."""
        if self.stop_reason.startswith("data_error: "):
            return 2
        if self.stop_reason.startswith("llm_unavailable") or self.best is None:
            return 1
        return 0


def check_config(config: RunConfig) -> None:
    """Validate what can be validated before any work: the dataset and the architect."""
    resolve_dataset(config.dataset, config.data_dir)  # raises DatasetError with the fix
    _architect(config, check=True)  # raises ArchitectError with the fix (key, endpoint)


def create_run(config: RunConfig, runs_dir: Path) -> Path:
    """Validate what can be validated before any work, then make ``runs_dir/RUN_ID``."""
    check_config(config)
    run_id = new_run_id()
    return create_run_at(config, runs_dir / run_id, run_id)


def create_run_at(config: RunConfig, run_dir: Path, run_id: str | None = None) -> Path:
    """Make a run directory at a chosen path (a sweep names its runs by their axis
    values); call :func:`check_config` first."""
    RunStore.create(run_dir, config_json(config), run_id=run_id or new_run_id()).close()
    return run_dir


# Each stops the run between iterations when reached (see ``_Loop.stop_reason``).
BUDGETS = ("max_hours", "max_energy_kwh", "max_tokens", "max_cost_usd")
# What ``resume`` may change: how long the run goes on, never what its candidates are.
EXTENDABLE = ("iterations", *BUDGETS)


def run_search(
    run_dir: Path,
    progress: Progress | None = None,
    evaluate: Evaluator = sandbox.evaluate,
    extend: dict[str, Any] | None = None,
) -> SearchResult:
    """Run (or continue) the search in ``run_dir`` until a termination condition holds.

    ``extend`` changes the run's length or budgets first (keys in ``EXTENDABLE``), so a
    finished or budget-stopped run can go on; the change is stored with the run.
    """
    progress = progress or Progress()
    with RunStore.open(run_dir, writer=True) as store:
        config = config_from_json(store.config_json())
        records = store.iterations()
        if extend:
            config = _extended(config, extend, len(records), store)
        task = resolve_dataset(config.dataset, config.data_dir)
        architect = _architect(config, check=True)
        if records:
            store.add_event("resumed", {"at_iteration": len(records)})
        store.set_status("running")
        loop = _Loop(config, task, architect, store, evaluate, progress)
        try:
            reason = loop.run(records)
        except KeyboardInterrupt:
            store.set_status("stopped", "interrupted")
            raise
        store.set_status("finished" if reason == "iterations" else "stopped", reason)
        store.add_event("stopped", {"reason": reason})
        records = store.iterations()
        return SearchResult(run_dir, records, best_of(records), reason)


def _extended(config: RunConfig, extend: dict[str, Any], done: int, store: RunStore) -> RunConfig:
    """``config`` with new length/budget values, validated, stored and recorded."""
    unknown = sorted(set(extend) - set(EXTENDABLE))
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: cannot change when resuming; only {', '.join(EXTENDABLE)} can"
        )
    if extend.get("iterations") is not None and extend["iterations"] <= done:
        raise ConfigError(f"iterations: the run already has {done}; give more than {done} to go on")
    new = build_config(config.model_dump(mode="json"), extend)
    changed = {
        k: [getattr(config, k), getattr(new, k)]
        for k in EXTENDABLE
        if getattr(config, k) != getattr(new, k)
    }
    if changed:
        store.set_config(config_json(new), changed)
    return new


class BudgetCut(Exception):
    """The time budget ran out while a candidate trained: the run stops without recording
    it (the candidate did nothing wrong), and a resume with more time runs it again."""


class DataUnavailable(Exception):
    """The sandbox could not load the dataset: the run stops before recording anything."""


def _data_error(error: str) -> str:
    """The DatasetError's own one line from the child's error text."""
    lines = error.strip().splitlines()
    last = lines[-1] if lines else "the dataset could not be loaded"
    return last.split("DatasetError: ", 1)[-1]


def _architect(config: RunConfig, check: bool = False) -> Architect:
    return create_architect(
        config.llm, seed=config.seed, max_params=config.max_params, config=config, check=check
    )


def best_of(records: list[IterationRecord]) -> IterationRecord | None:
    """Highest CM among good candidates; the earliest wins a tie (Algorithm 1, ``CM > BCM``)."""
    best: IterationRecord | None = None
    for rec in records:
        if rec.cm is not None and (best is None or best.cm is None or rec.cm > best.cm):
            best = rec
    return best


USAGE_KEYS = ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "latency_s")


def sum_usage(usages: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add up LLM usage; ``cost_usd`` is None when any call's price was unknown."""
    out: dict[str, Any] = dict.fromkeys(USAGE_KEYS, 0)
    cost: float | None = 0.0
    seen = False
    for usage in usages:
        if not usage:
            continue
        seen = True
        for key in USAGE_KEYS:
            out[key] += usage.get(key) or 0
        call_cost = usage.get("cost_usd")
        cost = None if cost is None or call_cost is None else cost + call_cost
    if not seen:
        return {}
    out["cost_usd"] = cost
    return out


def totals(records: list[IterationRecord]) -> dict[str, float]:
    """What a run has spent so far, for the budgets and the report."""
    usage = sum_usage(r.usage for r in records)
    energy = sum(r.evaluation.spent_kwh for r in records)
    return {
        "total_tokens": float(usage.get("total_tokens", 0)),
        "cost_usd": float(usage.get("cost_usd") or 0.0),
        "energy_kwh": energy,
    }


def elapsed_s(records: list[IterationRecord]) -> float:
    """Time spent in recorded iterations (resumes do not count downtime)."""
    return sum(max(0.0, r.finished_at - r.started_at) for r in records)


def search_job(cfg: RunConfig, code: str) -> EvalJob:
    """The sandbox job that trains and measures ``code`` under ``cfg``'s search protocol."""
    subset = cfg.search_subset  # an int is images per class, a float a fraction of each
    return EvalJob(
        code=code,
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        plateau_patience=cfg.plateau_patience,
        seed=cfg.seed,
        split_seed=cfg.seed,
        augment=cfg.augment,
        threads=cfg.threads,
        cpu_power_w_per_core=cfg.cpu_power_w_per_core,
        subset_per_class=subset if isinstance(subset, int) else 0,
        subset_fraction=subset if isinstance(subset, float) else 1.0,
        early_stopping_patience=cfg.early_stopping_patience,
        amp=cfg.amp,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
        deterministic=cfg.deterministic,
    )


class _Loop:
    def __init__(
        self,
        config: RunConfig,
        task: TaskSpec,
        architect: Architect,
        store: RunStore,
        evaluate: Evaluator,
        progress: Progress,
    ) -> None:
        self.config = config
        self.task = task
        self.architect = architect
        self.store = store
        self.evaluate = evaluate
        self.progress = progress

    def run(self, records: list[IterationRecord]) -> str:
        records = list(records)
        while True:
            reason = self.stop_reason(records)
            if reason:
                return reason
            try:
                records.append(self.iterate(len(records), records))
            except ArchitectUnavailable as exc:
                return f"llm_unavailable: {exc}"
            except DataUnavailable as exc:
                return f"data_error: {exc}"
            except BudgetCut as exc:
                return str(exc)

    def stop_reason(self, records: list[IterationRecord]) -> str | None:
        """Termination condition (Algorithm 1, line 21): whichever budget ends first."""
        if len(records) >= self.config.iterations:
            return "iterations"
        cfg = self.config
        if cfg.max_hours is not None and elapsed_s(records) >= cfg.max_hours * 3600:
            return "max_hours"
        spent = totals(records)
        if cfg.max_tokens is not None and spent["total_tokens"] >= cfg.max_tokens:
            return "max_tokens"
        if cfg.max_cost_usd is not None and spent["cost_usd"] >= cfg.max_cost_usd:
            return "max_cost_usd"
        if cfg.max_energy_kwh is not None and spent["energy_kwh"] >= cfg.max_energy_kwh:
            return "max_energy_kwh"
        return None

    def request(
        self, idx: int, records: list[IterationRecord]
    ) -> tuple[ProposalRequest, int | None]:
        """Algorithm 1, line 8's command: the parent's instructions, plus the last error."""
        good = [r for r in records if r.evaluation.status is Status.OK]
        parent = (best_of(records) if self.config.parent == "best" else None) or (
            good[-1] if good else None
        )
        last = records[-1] if records else None
        failed = last if last is not None and last.evaluation.status is not Status.OK else None
        request = ProposalRequest(
            iteration=idx,
            task=self.task,
            parent_code=parent.code if parent else None,
            parent_metrics=parent.evaluation.metrics if parent else None,
            instructions=tuple(parent.resolved_instructions) if parent else (),
            last_error=failed.evaluation.error if failed else None,
            parent_state=parent.state if parent else None,
            seed=self.config.seed,
            failed_code=failed.code if failed else None,
        )
        return request, parent.idx if parent else None

    def iterate(self, idx: int, records: list[IterationRecord]) -> IterationRecord:
        """One iteration: propose, evaluate and, while the code never got to train
        (no code, syntax, policy, build or shape failure), send the error back for a
        repair, up to ``max_repairs`` times. Every attempt is kept; the last one is the
        iteration's result. If the architect becomes unavailable after some attempts,
        those are committed before the loop stops."""
        started = time.time()
        request, parent_idx = self.request(idx, records)
        self.progress.on_start(idx, request)
        attempts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        history: list[tuple[str, str]] = []
        last: tuple[Proposal, Evaluation] | None = None
        unavailable: ArchitectUnavailable | None = None
        for attempt in range(self.config.max_repairs + 1):
            try:
                proposal = self.architect.propose(
                    replace(request, attempt=attempt, history=tuple(history))
                )
            except ArchitectUnavailable as exc:
                unavailable = exc
                break
            self.progress.on_evaluating(idx, proposal)
            evaluation = self.evaluate_proposal(proposal, records)
            if evaluation.status is Status.FAILED_DATA:  # stop; nothing is the model's fault
                raise DataUnavailable(_data_error(evaluation.error))
            if evaluation.status is Status.TIMEOUT and self.cut_by_time_budget(records):
                self.store.add_event(
                    "budget_cut", {"iteration": idx, "wall_time_s": evaluation.wall_time_s}
                )
                raise BudgetCut("max_hours")
            last = (proposal, evaluation)
            calls.extend(proposal.calls)
            attempts.append(
                {
                    "attempt": attempt,
                    "status": evaluation.status.value,
                    "error": evaluation.error,
                    "code": proposal.code or proposal.answer,
                    "notes": proposal.notes,
                    "usage": dict(proposal.usage),
                    "wall_time_s": evaluation.wall_time_s,
                }
            )
            if evaluation.status not in prompts.REPAIRABLE:
                break
            history.append((proposal.answer or prompts.fence(proposal.code), evaluation.error))
        if last is None:
            assert unavailable is not None
            raise unavailable
        proposal, evaluation = last
        raw: dict[str, float] = {}
        resolved: list[tuple[str, float]] = []
        cm = None
        if evaluation.status is Status.OK and evaluation.metrics is not None:
            values = evaluation.metrics.for_rules()
            cfg = self.config
            raw, resolved = rules.instructions_for(
                values, cfg.priorities.model_dump(), cfg.thresholds.model_dump()
            )
            cm = combined_effectiveness(
                values, cfg.thresholds.model_dump(), cfg.weights.model_dump()
            )
        record = IterationRecord(
            idx=idx,
            started_at=started,
            finished_at=time.time(),
            parent_idx=parent_idx,
            architect=self.config.llm,
            prompt_instructions=request.instructions,
            code=proposal.code or proposal.answer,
            state=proposal.state,
            notes=proposal.notes,
            evaluation=evaluation,
            raw_instructions=raw,
            resolved_instructions=tuple(resolved),
            cm=cm,
            usage=sum_usage(a["usage"] for a in attempts),
            attempts=tuple(attempts),
            calls=tuple(calls),
        )
        self.store.record_iteration(record)
        self.progress.on_end(record, best_of([*records, record]))
        if unavailable is not None:
            raise unavailable
        return record

    def evaluate_proposal(self, proposal: Proposal, records: list[IterationRecord]) -> Evaluation:
        if proposal.rejected is not None:
            return Evaluation(Status.FAILED_EXTRACT, error=proposal.rejected)
        return self.evaluate(
            self.job(proposal.code), self.timeout_s(records), self.config.memory_limit_mb
        )

    def job(self, code: str) -> EvalJob:
        return search_job(self.config, code)

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
