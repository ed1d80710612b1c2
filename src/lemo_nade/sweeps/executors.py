"""Where a sweep's runs execute: one interface, registered by name.

- ``local``: in this process one after another, or ``jobs`` worker processes
  (``concurrent.futures`` with the ``spawn`` start method, so no state leaks from the
  parent). Jobs are capped at the machine's cores, and each candidate's torch gets
  ``cores // jobs`` threads, so jobs x threads never oversubscribes the CPU.
- ``ray``: each run is a Ray task asking for ``num_cpus``/``num_gpus`` (the sweep
  file's ``[resources]``); Ray does the scheduling, placement and retries. A task
  that dies with its node is retried by Ray and resumes from the run's store. The run
  directories must be on a file system every node sees, and lemo-nade must be
  installed on every node.

A run that raises is a :class:`RunOutcome` with state ``failed``, never an exception
across the sweep: the other runs go on. Pure: no torch in this process.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lemo_nade.config import ConfigError
from lemo_nade.records import EvalJob, Evaluation

if TYPE_CHECKING:
    from lemo_nade.sandbox import Sandbox


@dataclass(frozen=True)
class RunTask:
    name: str
    run_dir: str  # a plain string: it crosses process and machine boundaries


@dataclass(frozen=True)
class RunOutcome:
    name: str
    state: str  # the store's status after the call ("finished", "stopped"), or "failed"
    reason: str  # the stop reason, or the error of a failed run
    seconds: float
    worker: str = ""  # HOST:PID of the process that ran it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Executor(Protocol):
    def run(self, tasks: list[RunTask]) -> Iterator[RunOutcome]:
        """Execute the tasks; yield each outcome as soon as its run ends."""
        ...


def available_cores() -> int:
    """Cores this process may use (its affinity mask, e.g. under taskset or a cgroup)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1  # pragma: no cover - non-Linux


def execute_run(task: RunTask, threads: int) -> RunOutcome:
    """Run or resume one run to its end, in whatever process or node this is called."""
    from lemo_nade.sandbox import Sandbox
    from lemo_nade.search import run_search
    from lemo_nade.store import RunStore

    started = time.monotonic()
    try:
        with Sandbox() as box:  # the run's own fork server, stopped when the run ends
            evaluate = partial(_evaluate_with_threads, box, threads)
            result = run_search(Path(task.run_dir), evaluate=evaluate)
        with RunStore.open(Path(task.run_dir)) as store:
            state, reason = store.status()
        if result.exit_code:  # what `lemo-nade run` exits non-zero for fails here too
            state = "failed"
            if not result.stop.external:
                reason = f"no candidate succeeded ({reason})"
    except Exception as exc:  # a failed run is an outcome: the sweep goes on
        state, reason = "failed", f"{type(exc).__name__}: {exc}"
    seconds = round(time.monotonic() - started, 3)
    return RunOutcome(task.name, state, reason, seconds, f"{socket.gethostname()}:{os.getpid()}")


def _evaluate_with_threads(
    box: Sandbox, threads: int, job: EvalJob, timeout_s: float, memory_limit_mb: int | None
) -> Evaluation:
    """The sandbox, with the executor's thread share unless the config set ``threads``."""
    if not job.threads:
        job = replace(job, threads=threads)
    return box.evaluate(job, timeout_s, memory_limit_mb)


class LocalExecutor:
    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, min(jobs, available_cores()))

    def run(self, tasks: list[RunTask]) -> Iterator[RunOutcome]:
        jobs = min(self.jobs, len(tasks)) or 1
        threads = max(1, available_cores() // jobs)
        if jobs == 1:
            for task in tasks:
                yield execute_run(task, threads)
            return
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {pool.submit(execute_run, task, threads): task for task in tasks}
            for future in as_completed(futures):
                try:
                    yield future.result()
                except BrokenProcessPool as exc:  # a worker was killed (e.g. by the OOM killer)
                    yield RunOutcome(futures[future].name, "failed", f"worker died: {exc}", 0.0)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Runs as Ray tasks on the cluster at ``address`` (``auto``, ``ray://HOST:PORT``);
    without one, on a local Ray instance started here (or the one already initialised)."""

    def __init__(self, address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(
                "executor: ray is not installed; pip install 'lemo-nade[ray]'"
            ) from None
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus

    def run(self, tasks: list[RunTask]) -> Iterator[RunOutcome]:
        import ray

        started_here = not ray.is_initialized()
        if started_here and self.address:
            ray.init(address=self.address)
        elif started_here:  # a local instance for this sweep only
            ray.init(include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(execute_run)
        threads = max(1, math.floor(self.num_cpus))
        refs = {remote.remote(task, threads): task for task in tasks}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    yield ray.get(done[0])
                except ray.exceptions.RayError as exc:  # the task died, or was cancelled
                    line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    reason = f"ray: {type(exc).__name__}: {line}"
                    yield RunOutcome(refs[done[0]].name, "failed", reason, 0.0)
        finally:
            for ref in pending:  # interrupted: do not leave runs training on the cluster
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()


EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor, "ray": RayExecutor}


def create_executor(name: str, **options: Any) -> Executor:
    factory = EXECUTORS.get(name)
    if factory is None:
        raise ConfigError(f"executor: unknown executor {name!r}; allowed: {', '.join(EXECUTORS)}")
    return factory(**options)
