"""The search and retrain protocol across processes: a candidate produces weights, never
numbers.

Main-process side: no torch import. For each search candidate (``EvalJob.mode ==
"search"``) and each retrain session (``"retrain"``: the final protocol, checkpoints in
the kept ``work/`` folder, the test set in ``eval.pt``, measured once by the measuring
child) the sandbox runs, each in its own confined child:

1. ``prepare`` (once per run and data split, trusted code): the prepared data files in a
   directory the sandbox owns (:mod:`lemo_nade.engine.prepared`). Afterwards they belong
   to the run's user and are read-only for the children.
2. ``train`` (the candidate's code): reads only ``train.pt`` (training split less the
   plateau slice; no validation or test labels), trains, and writes ``model.pt2``, a
   ``torch.export`` archive. Its working directory is a fresh temporary one; the run
   process reads the archive from it without following links, as a regular file under
   a size cap, and ignores everything else the child wrote (its result file counts
   only for its status and error text).
3. ``measure`` (forked from the fork server, it never executes candidate code; still
   confined, since the archive is untrusted data): loads the archive without unpickling
   and computes A1, A2, E2, P, FLOPs, FPS and latency.

E1 and the training time are measured here, from outside the candidate's process: its
CPU time and peak memory from ``wait4`` (the fork server reaps it), wall time around it,
and the machine's RAPL counters and, with an NVIDIA GPU, NVML's energy counter over its
lifetime where readable (``sensors.detect_outside``). They cover the whole
training process (building, loading the prepared data, training, export), not the
training loop alone. ``LEMO_NADE_SPLIT=0`` restores the one-process protocol for search
candidates (the candidate's process measures itself), for comparison only; a retrain
always goes this way.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lemo_nade.engine import access, energy, sensors
from lemo_nade.engine.protocol import ARTIFACT_FILE, EVAL_FILE, MAX_ARTIFACT_BYTES, TRAIN_FILE
from lemo_nade.records import EvalJob, Evaluation, Metrics, Status
from lemo_nade.sandbox.handover import read_regular
from lemo_nade.sandbox.launch import Outcome
from lemo_nade.sandbox.workdirs import WORKDIR_PREFIX, workdir

SPLIT_ENV = "LEMO_NADE_SPLIT"
PREPARED_MARK = "data"  # in the prepared directory's name (swept like a workdir if stale)
LOG_CAP_CHARS = 64_000
MIN_MEASURE_S = 30.0  # the measuring child's own wall clock, at least

# run(where, job, timeout_s, read_paths) -> (evaluation, outcome): one confined child
RunPhase = Callable[[Path, EvalJob, float, "tuple[str, ...] | None"], tuple[Evaluation, Any]]


@functools.cache
def _machine_sensors() -> sensors.Sensors:
    """This machine's counters around a training child: RAPL and, where the machine has
    an NVIDIA GPU, NVML (no torch here); found once per process, not per candidate."""
    return sensors.detect_outside(access.has_gpu(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def applies(job: EvalJob) -> bool:
    """Whether ``job`` goes through the split protocol: a retrain always, a search
    candidate unless ``LEMO_NADE_SPLIT=0``."""
    if job.phase != "all":
        return False
    return job.mode == "retrain" or (job.mode == "search" and os.environ.get(SPLIT_ENV) != "0")


class PreparedData:
    """The prepared data directories of one sandbox, by data split; removed at close."""

    def __init__(self) -> None:
        self._dirs: dict[tuple[Any, ...], Path] = {}

    def get(self, job: EvalJob, run: RunPhase, timeout_s: float) -> Path | Evaluation:
        key = (
            job.mode,  # a retrain's eval.pt also holds the test set
            job.dataset,
            job.data_dir,
            job.split_seed,
            job.val_fraction,
            job.subset_per_class,
            job.subset_fraction,
        )
        if key in self._dirs:
            return self._dirs[key]
        where = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-{PREPARED_MARK}"))
        prepare = replace(job, phase="prepare", prepared=str(where), code="")
        evaluation, _ = run(where, prepare, timeout_s, None)
        if evaluation.status is not Status.OK:
            shutil.rmtree(where, ignore_errors=True)
            return evaluation
        _seal(where)
        self._dirs[key] = where
        return where

    def remove(self) -> None:
        for where in self._dirs.values():
            shutil.rmtree(where, ignore_errors=True)
        self._dirs.clear()


def _seal(where: Path) -> None:
    """The prepared files belong to the run's user from now on, read-only to others: a
    child (which may run as another uid) can read them but not change them."""
    for path in [where, *where.iterdir()]:
        if hasattr(os, "chown") and os.getuid() == 0:
            os.chown(path, 0, 0, follow_symlinks=False)
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


def evaluate(
    job: EvalJob,
    timeout_s: float,
    run: RunPhase,
    prepared: PreparedData,
    train_dir: Path | None = None,
) -> Evaluation:
    """Prepare (once), train (the candidate), measure (trusted): one Evaluation, carrying
    the measured archive. ``train_dir``: the training child's working directory, kept
    (a retrain's ``work/``, with its checkpoint), instead of a fresh temporary one."""
    start = time.perf_counter()
    data = prepared.get(job, run, timeout_s)
    if isinstance(data, Evaluation):
        return data
    trained, e1, model = _train(job, timeout_s, run, data, train_dir)
    if model is None:
        failure_kwh = e1.energy_kwh if e1 is not None else None
        return replace(trained, metrics=None, failure_kwh=failure_kwh)
    assert e1 is not None
    left = max(MIN_MEASURE_S, timeout_s - (time.perf_counter() - start))
    with workdir(None) as where:
        (where / ARTIFACT_FILE).write_bytes(model)
        measure = replace(
            job,
            phase="measure",
            code="",
            prepared=str(data),
            artifact=str(where / ARTIFACT_FILE),
            train_time_s=e1.wall_s,
        )
        measured, _ = run(where, measure, left, (str(data / EVAL_FILE),))
    log_tail = (trained.log_tail + measured.log_tail)[-LOG_CAP_CHARS:]  # training, then measuring
    if measured.status is not Status.OK or measured.metrics is None:
        spent = e1.energy_kwh + (measured.failure_kwh or 0.0)
        return replace(measured, failure_kwh=spent, log_tail=log_tail)
    metrics = _with_training(measured.metrics, e1)
    return replace(measured, metrics=metrics, artifact=model, log_tail=log_tail)


def _train(
    job: EvalJob, timeout_s: float, run: RunPhase, data: Path, train_dir: Path | None
) -> tuple[Evaluation, energy.Reading | None, bytes | None]:
    """The candidate's process, measured from outside; its archive, read safely."""
    usage: dict[str, float] = {}
    detected = _machine_sensors()
    train_job = replace(job, phase="train", prepared=str(data))
    with (
        workdir(train_dir) as where,
        energy.span(
            detected,
            job.cpu_power_w_per_core,
            job.ram_power_w_per_gb,
            usage=lambda: (usage.get("cpu_s", 0.0), usage.get("rss_gb", 0.0)),
        ) as e1,
    ):
        trained, ended = run(where, train_job, timeout_s, (str(data / TRAIN_FILE),))
        if isinstance(ended, Outcome) and ended.cpu_s is not None:
            usage["cpu_s"] = ended.cpu_s
            usage["rss_gb"] = (ended.maxrss_kb or 0) * 1024 / 1e9
        model = read_regular(where / ARTIFACT_FILE, MAX_ARTIFACT_BYTES)
    reading = e1 if usage else None  # no rusage (the child was not reaped): unmeasured
    if trained.status is not Status.OK:
        return _candidate_status(trained), reading, None
    if not model:
        error = (
            "failed_export: the candidate's process ended without handing over its model "
            f"({ARTIFACT_FILE} missing, not a regular file, or over "
            f"{MAX_ARTIFACT_BYTES // 2**20} MB)"
        )
        failed = Evaluation(Status.FAILED_EXPORT, error=error, log_tail=trained.log_tail)
        return failed, reading, None
    return trained, reading, model


# What the candidate's own result may say about how it ended; anything else (a claimed
# data error would stop the run, a claimed timeout would blame the budget) is refused.
_CANDIDATE_STATUSES = frozenset(
    {
        Status.OK,
        Status.FAILED_BUILD,
        Status.FAILED_SHAPE,
        Status.FAILED_NAN,
        Status.FAILED_TRAIN,
        Status.FAILED_EXPORT,
        Status.OOM,
    }
)
# What the sandbox itself concludes about the child (not read from its result).
_SANDBOX_STATUSES = frozenset({Status.TIMEOUT, Status.CRASHED, Status.FAILED_RESULT})


def _candidate_status(trained: Evaluation) -> Evaluation:
    """A failed training child's outcome, as far as it may speak for itself: loading the
    prepared data is part of its process, so a data failure there is its own."""
    if trained.status is Status.FAILED_DATA:
        return replace(trained, status=Status.FAILED_TRAIN)
    if trained.status in _CANDIDATE_STATUSES or trained.status in _SANDBOX_STATUSES:
        return trained
    return replace(
        trained,
        status=Status.FAILED_RESULT,
        error=f"failed_result: the candidate's process claimed status {trained.status.value!r}",
    )


def _with_training(metrics: Metrics, e1: energy.Reading) -> Metrics:
    """The measuring child's metrics completed with what was measured from outside."""
    sources = dict(part.split("=", 1) for part in metrics.energy_sources.split(",") if "=" in part)
    merged = {part: sources.get(part, e1.sources[part]) for part in e1.sources}
    return replace(
        metrics,
        E1=e1.energy_kwh,
        E1_parts=dict(e1.parts_kwh),
        train_time_s=e1.wall_s,
        candidate_kwh=(metrics.candidate_kwh or 0.0) + e1.energy_kwh,
        energy_sources=",".join(f"{k}={v}" for k, v in merged.items()),
        energy_source=energy.combined_source(merged),
    )
