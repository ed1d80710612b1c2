"""Sweeps: the paper's experiment grids (Tables 3-10) as one resumable command.

A sweep file (TOML) declares a base run config and axes; the product of the axes
becomes runs. Each run is a normal run directory, ``SWEEP_DIR/runs/NAME``, named by
its axis values (``setting=3,temperature=0.4``), so ``lemo-nade show`` and
``resume`` work on it. The sweep directory also holds ``sweep.toml`` (the file as
given), ``plan.json`` (every run's name, axis values and resolved config, for
``sweep-report``) and ``status.json`` (each run's last outcome, with the error of a
failed one).

Re-running the same command is resuming: a run whose store says ``finished`` is
skipped, any other is continued by :func:`~lemo_nade.search.run_search` from its
last committed iteration, and a failed run is tried again. A run whose stored config
differs from the plan (the sweep file changed under it) is refused before any work.

Pure main-process side: no torch. Where runs execute is :mod:`lemo_nade.sweeps.executors`.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lemo_nade.config import (
    ConfigError,
    RunConfig,
    build_config,
    config_from_json,
    one_line,
)
from lemo_nade.config_files import load_toml, read_toml
from lemo_nade.files import atomic_write as write_atomic
from lemo_nade.store import DB_NAME, RunStore, StoreError
from lemo_nade.sweeps.executors import Executor, RunOutcome, RunTask

PLAN_FORMAT = 1
PLAN_NAME = "plan.json"
STATUS_NAME = "status.json"
FILE_COPY_NAME = "sweep.toml"
LOCK_NAME = "sweep.lock"
RUNS_DIR = "runs"
MAX_NAME_LEN = 200  # file names are at most 255 bytes on common file systems

Scalar = bool | int | float | str


class Resources(BaseModel):
    """What one run asks of a Ray cluster; the local executor shares the cores instead."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    num_cpus: float = Field(1.0, gt=0, description="CPUs per run (also its torch threads)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per run; a fraction shares a GPU")


class SweepFile(BaseModel):
    """The sweep TOML: ``[base]`` (or ``base = "run.toml"``), ``[axes]``, ``[resources]``."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    base: dict[str, Any] | str = Field(default_factory=dict)
    axes: dict[str, list[Scalar]] = Field(default_factory=dict)
    resources: Resources = Resources()

    @field_validator("axes", mode="before")
    @classmethod
    def _flatten(cls, value: Any) -> Any:
        """``thresholds.TA2 = [..]`` is a nested table in TOML; make it one dotted key."""
        return _flat(value) if isinstance(value, dict) else value

    @field_validator("axes")
    @classmethod
    def _non_empty_unique(cls, axes: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        for key, values in axes.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values; give a list like [1, 2]")
            if len({(type(v), v) for v in values}) != len(values):
                raise ValueError(f"axis {key!r} repeats a value")
        return axes


def _flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass(frozen=True)
class PlannedRun:
    name: str
    axes: dict[str, Scalar]
    config: RunConfig


@dataclass(frozen=True)
class SweepPlan:
    source: Path
    axes: dict[str, list[Scalar]]
    resources: Resources
    runs: tuple[PlannedRun, ...]

    def to_json(self) -> str:
        doc = {
            "format": PLAN_FORMAT,
            "source": str(self.source),
            "axes": self.axes,
            "resources": self.resources.model_dump(),
            "runs": [
                {"name": r.name, "axes": r.axes, "config": r.config.model_dump(mode="json")}
                for r in self.runs
            ],
        }
        return json.dumps(doc, indent=2) + "\n"


def load_sweep(path: Path, sets: dict[str, Any] | None = None) -> SweepPlan:
    """Read and validate a sweep file; every run's config is built and checked here.

    Precedence per run: defaults < ``setting`` < base < ``sets`` (``--set``) < axes.
    """
    table = read_toml(path, "sweep", "pass an existing sweep TOML file")
    try:
        sweep = SweepFile.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(f"sweep {path}: {one_line(exc, SweepFile)}") from None
    base = sweep.base
    if isinstance(base, str):  # a run config file, relative to the sweep file
        if not (path.parent / base).is_file():
            raise ConfigError(f"sweep {path}: base: file {path.parent / base} not found")
        base = load_toml(path.parent / base)
    sets = sets or {}
    clash = sorted(set(_flat(sets)) & set(sweep.axes))
    if clash:
        raise ConfigError(f"--set {clash[0]}: is an axis of {path}; change the axis in the file")
    keys = list(sweep.axes)
    runs: list[PlannedRun] = []
    seen: dict[str, dict[str, Scalar]] = {}
    for combo in itertools.product(*sweep.axes.values()):
        axes = dict(zip(keys, combo, strict=True))
        name = run_name(axes)
        if name in seen:
            raise ConfigError(
                f"sweep {path}: runs {seen[name]} and {axes} get the same directory name {name!r}"
            )
        seen[name] = axes
        try:
            config = build_config(base, sets, _nested(axes))
        except ConfigError as exc:
            raise ConfigError(f"sweep {path}: run {name}: {exc}") from None
        runs.append(PlannedRun(name, axes, config))
    return SweepPlan(path.resolve(), dict(sweep.axes), sweep.resources, tuple(runs))


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def run_name(axes: dict[str, Scalar]) -> str:
    """``setting=3,temperature=0.4``: filesystem-safe, in the axes' declared order."""
    if not axes:
        return "run"
    parts = [f"{key}={_fmt(value)}" for key, value in axes.items()]
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))
    if len(name) > MAX_NAME_LEN:
        raise ConfigError(f"sweep: run name {name[:40]}... is too long; use fewer or shorter axes")
    return name


def _fmt(value: Scalar) -> str:
    """An axis value as the sweep file spells it (true/false, a float's repr), for a run's
    directory name: it must never change, or resumed sweeps lose their runs. Not a number
    display (tables use :func:`lemo_nade.numbers.fmt`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


# -- the sweep directory ------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    skipped: tuple[str, ...]  # finished before this call
    outcomes: tuple[RunOutcome, ...]  # of the runs executed by this call

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.state == "failed"]


def run_dir_of(sweep_dir: Path, name: str) -> Path:
    return sweep_dir / RUNS_DIR / name


@dataclass(frozen=True)
class SweepProgress:
    """Callbacks for a display; all optional."""

    on_ready: Callable[[list[RunTask], tuple[str, ...]], None] = lambda tasks, skipped: None
    on_outcome: Callable[[RunOutcome], None] = lambda outcome: None


def run_sweep(
    plan: SweepPlan, sweep_dir: Path, executor: Executor, progress: SweepProgress | None = None
) -> SweepResult:
    """Make the missing run directories, then execute every run that is not finished."""
    progress = progress or SweepProgress()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with _locked(sweep_dir):
        states = _prepare(plan, sweep_dir)
        skipped = tuple(name for name, state in states.items() if state == "finished")
        tasks = [
            RunTask(r.name, str(run_dir_of(sweep_dir, r.name)))
            for r in plan.runs
            if r.name not in skipped
        ]
        progress.on_ready(tasks, skipped)
        status = read_status(sweep_dir)
        outcomes: list[RunOutcome] = []
        for outcome in executor.run(tasks):
            outcomes.append(outcome)
            status[outcome.name] = {**outcome.to_dict(), "at": time.time()}
            write_atomic(sweep_dir / STATUS_NAME, json.dumps(status, indent=2) + "\n")
            progress.on_outcome(outcome)
    return SweepResult(skipped, tuple(outcomes))


def _prepare(plan: SweepPlan, sweep_dir: Path) -> dict[str, str]:
    """Check existing runs against the plan, validate new ones, then create them.

    Returns each run's store status. Nothing is created unless every check passes.
    """
    from lemo_nade.runs import check_config, create_run_at

    states: dict[str, str] = {}
    for run in plan.runs:
        run_dir = run_dir_of(sweep_dir, run.name)
        if not (run_dir / DB_NAME).is_file():
            continue
        with RunStore.open(run_dir) as store:
            stored = config_from_json(store.config_json())
            states[run.name] = store.status()[0]
        if stored != run.config:
            raise ConfigError(
                f"sweep {sweep_dir}: run {run.name} was made with a different config "
                f"({_first_difference(stored, run.config)}); the sweep file or --set changed: "
                "restore them, or pass a new --sweep-dir"
            )
    new = [r for r in plan.runs if r.name not in states]
    for run in new:
        check_config(run.config)
    write_atomic(sweep_dir / FILE_COPY_NAME, plan.source.read_text(encoding="utf-8"))
    write_atomic(sweep_dir / PLAN_NAME, plan.to_json())
    for run in new:
        create_run_at(run.config, run_dir_of(sweep_dir, run.name))
        states[run.name] = "created"
    return states


def _first_difference(old: RunConfig, new: RunConfig) -> str:
    a, b = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    for key in [*a, *(k for k in b if k not in a)]:
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key)!r} then, {b.get(key)!r} now"
    return "unknown difference"  # pragma: no cover - equal dumps mean equal configs


def read_plan(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / PLAN_NAME
    if not path.is_file():
        raise StoreError(
            f"{sweep_dir} is not a sweep directory (no {PLAN_NAME}); "
            "pass a directory made by `lemo-nade sweep`"
        )
    plan: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if plan.get("format") != PLAN_FORMAT:
        raise StoreError(f"{path} has format {plan.get('format')!r}; upgrade lemo-nade to read it")
    return plan


def shows_failed(last: dict[str, Any] | None, run_status: str | None) -> bool:
    """Whether a sweep's run shows as failed: its last recorded attempt (``last``, its
    :func:`read_status` entry) failed and the run did not finish after all. The sweep
    table and the dashboard show a run's state by this one rule."""
    return last is not None and last.get("state") == "failed" and run_status != "finished"


def read_status(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    path = sweep_dir / STATUS_NAME
    if not path.is_file():
        return {}
    status: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return status


@contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    """One sweep process per directory (the runs' own locks stop two writers per run)."""
    fd = os.open(sweep_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"{sweep_dir} is in use by another `lemo-nade sweep`; wait for it or stop it"
            ) from None
        yield
    finally:
        os.close(fd)
