"""The Ray executor against a real local Ray instance (2 CPUs, bound to 127.0.0.1):
each run is a Ray task, and the results equal sequential execution's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lemo_nade.cli import app
from lemo_nade.sweeps.executors import LocalExecutor
from lemo_nade.sweeps.plan import load_sweep, run_sweep
from test_sweep import TINY, results, workers, write

ray: Any = pytest.importorskip("ray")
runner = CliRunner()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_executor_gives_the_same_results_as_sequential(local_ray: None, tmp_path: Path) -> None:
    sweep_file = write(tmp_path / "s.toml", TINY)
    run_sweep(load_sweep(sweep_file), tmp_path / "seq", LocalExecutor(jobs=1))
    args = ["sweep", str(sweep_file), "--sweep-dir", str(tmp_path / "ray"), "--executor", "ray"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 runs ended, 0 already finished, 0 failed" in result.output
    assert results(tmp_path / "ray") == results(tmp_path / "seq")
    assert os.getpid() not in workers(tmp_path / "ray")  # they ran in Ray's worker processes
    assert ray.is_initialized()  # the executor leaves a Ray it did not start running

    again = runner.invoke(app, args)  # resumable on Ray too: nothing left to do
    assert again.exit_code == 0 and "0 runs ended, 2 already finished" in again.output
