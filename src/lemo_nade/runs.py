"""A run before and around its loop: validating a config, making the run directory,
lengthening a stored run on resume, and the sandbox job of the search protocol.

Pure main-process side: no torch import. The loop itself is :mod:`lemo_nade.search`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lemo_nade.architects import Architect, create_architect
from lemo_nade.config import ConfigError, RunConfig, build_config, config_json
from lemo_nade.datasets import resolve_dataset
from lemo_nade.records import EvalJob
from lemo_nade.store import RunStore, new_run_id

# Each stops the run between iterations when reached (see ``search.Search.termination``).
BUDGETS = ("max_hours", "max_energy_kwh", "max_tokens", "max_cost_usd")
# What ``resume`` may change: how long the run goes on, never what its candidates are.
EXTENDABLE = ("iterations", *BUDGETS)


def check_config(config: RunConfig) -> None:
    """Validate what can be validated before any work: the dataset and the architect."""
    resolve_dataset(config.dataset, config.data_dir)  # raises DatasetError with the fix
    architect_for(config, check=True)  # raises ArchitectError with the fix (key, endpoint)


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


def architect_for(config: RunConfig, check: bool = False) -> Architect:
    """The run's architect; ``check`` also reaches its endpoint (an LLM's), so a bad key or
    a server that is down is bad input before any training."""
    return create_architect(
        config.llm, seed=config.seed, max_params=config.max_params, config=config, check=check
    )


def extend_config(
    config: RunConfig, extend: dict[str, Any], done: int, store: RunStore
) -> RunConfig:
    """``config`` with new length/budget values (keys in :data:`EXTENDABLE`), validated,
    stored and recorded; ``done`` is how many search candidates the run already has (its
    promotions are not counted by ``iterations``)."""
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
