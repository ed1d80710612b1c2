"""Sweeps: the plan (axes product, names, precedence), bad input, a changed file
refused, failures recorded and retried, --jobs 2 equal to sequential, and a sweep
killed mid-way completed by the same command. Real runs on the built-in digits
data with one or two candidates of one epoch each."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lemo_nade.cli import app
from lemo_nade.config import ConfigError
from lemo_nade.store import RunStore
from lemo_nade.sweeps.executors import RunOutcome, RunTask
from lemo_nade.sweeps.plan import load_sweep, read_status, run_sweep

runner = CliRunner()
pytest_plugins = ["sandbox_fixtures"]
pytestmark = pytest.mark.usefixtures("shared_sandbox")  # one fork server for these runs
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DIGITS_NPZ = Path(__file__).resolve().parents[1] / "src" / "lemo_nade" / "data" / "digits.npz"

# Two runs of two one-epoch candidates; threads = 1 so every executor computes the same.
TINY = """
[base]
iterations = 2
epochs = 1
threads = 1
promote = 0
[axes]
setting = [1, 4]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def results(sweep_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """What a run computes deterministically: each candidate's code, status, A1, A2, P.
    (FPS and energies are timings, so CM and the best candidate may differ.)"""
    out = {}
    for run_dir in sorted((sweep_dir / "runs").iterdir()):
        with RunStore.open(run_dir) as store:
            assert store.status() == ("finished", "iterations"), run_dir
            out[run_dir.name] = [
                (r.code, r.status.value, r.evaluation.metrics.A1, r.evaluation.metrics.A2,
                 r.evaluation.metrics.P)
                if r.evaluation.metrics else (r.code, r.status.value)
                for r in store.iterations()
            ]  # fmt: skip
    return out


def workers(sweep_dir: Path) -> set[int]:
    return {int(s["worker"].rsplit(":", 1)[1]) for s in read_status(sweep_dir).values()}


class NoRuns:
    """An executor that runs nothing: the sweep directory is prepared, no training."""

    def run(self, tasks: list[RunTask]) -> Iterator[RunOutcome]:
        return iter(())


def test_plan_is_the_product_of_the_axes_with_names_and_precedence(tmp_path: Path) -> None:
    sweep_file = write(
        tmp_path / "s.toml",
        """
        [base]
        epochs = 3
        iterations = 4
        [axes]
        setting = [3, 4]
        thresholds.TA2 = [0.9, 0.95]   # a dotted key is a nested table in TOML
        llm = ["offline"]
        [resources]
        num_cpus = 2
        """,
    )
    plan = load_sweep(sweep_file, {"epochs": 1})
    assert [r.name for r in plan.runs] == [
        "setting=3,thresholds.TA2=0.9,llm=offline",
        "setting=3,thresholds.TA2=0.95,llm=offline",
        "setting=4,thresholds.TA2=0.9,llm=offline",
        "setting=4,thresholds.TA2=0.95,llm=offline",
    ]
    last = plan.runs[-1].config
    assert (last.setting, last.thresholds.TA2, last.epochs, last.iterations) == (4, 0.95, 1, 4)
    assert last.priorities.PE1 == 0.5  # setting 4's Table 4 priorities
    assert plan.resources.num_cpus == 2 and plan.resources.num_gpus == 0
    named = write(tmp_path / "n.toml", '[axes]\nllm = ["openai:gpt-4o"]\naugment = [true]\n')
    assert load_sweep(named).runs[0].name == "llm=openai_gpt-4o,augment=true"


@pytest.mark.parametrize(
    ("text", "args", "needle"),
    [
        ("[axes]\nsetting = [1, 9]\n", [], "setting"),
        ("[axes]\ntemprature = [0.2]\n", [], "temprature: unknown key"),
        ("[axes]\nseed = []\n", [], "no values"),
        ("[axes]\nseed = 3\n", [], "axes.seed"),
        ("[axes]\nseed = [1, 1]\n", [], "repeats"),
        ("[base]\nepochs = 0\n", [], "epochs"),
        ("[axes]\nseed = [1]\n[resources]\ncpus = 1\n", [], "resources.cpus"),
        ("[axes]\nseed = [1, 2]\n", ["--set", "seed=3"], "is an axis"),
        ("[axes]\nseed = [1]\n", ["--address", "auto"], "--address"),
        ("[axes]\nseed = [1]\n", ["--executor", "slurm"], "unknown executor"),
        ("[axes]\nseed = [1]\n", ["--executor", "ray", "--jobs", "2"], "--jobs"),
        ("[base]\ndataset = 'cifar10'\n", [], "data_dir"),
    ],
)
def test_bad_sweep_input_is_one_line_exit_2(
    tmp_path: Path, text: str, args: list[str], needle: str
) -> None:
    sweep_file = write(tmp_path / "s.toml", text)
    sweep_dir = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(sweep_file), "--sweep-dir", str(sweep_dir), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), result.output
    assert not (sweep_dir / "runs").exists()  # nothing is created for bad input


def test_report_of_a_non_sweep_directory_is_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep-report", str(tmp_path)])
    assert result.exit_code == 2 and "not a sweep directory" in result.output


def test_a_changed_sweep_file_is_refused_and_an_extended_one_accepted(tmp_path: Path) -> None:
    sweep_file = write(tmp_path / "s.toml", TINY)
    sweep_dir = tmp_path / "sweep"
    run_sweep(load_sweep(sweep_file), sweep_dir, NoRuns())
    assert sorted(p.name for p in (sweep_dir / "runs").iterdir()) == ["setting=1", "setting=4"]
    assert (sweep_dir / "sweep.toml").read_text() == TINY
    write(sweep_file, TINY.replace("epochs = 1", "epochs = 2"))
    with pytest.raises(ConfigError, match=r"run setting=1 .*epochs: 1 then, 2 now"):
        run_sweep(load_sweep(sweep_file), sweep_dir, NoRuns())
    write(sweep_file, TINY.replace("[1, 4]", "[1, 4, 5]"))
    run_sweep(load_sweep(sweep_file), sweep_dir, NoRuns())
    assert (sweep_dir / "runs" / "setting=5" / "run.sqlite").is_file()
    plan = json.loads((sweep_dir / "plan.json").read_text())
    assert [r["name"] for r in plan["runs"]] == ["setting=1", "setting=4", "setting=5"]


def test_examples_are_valid_sweeps(tmp_path: Path) -> None:
    quick = load_sweep(EXAMPLES / "quick.toml")
    assert len(quick.runs) == 6 and all(r.config.dataset == "digits" for r in quick.runs)
    sweep_dir = tmp_path / "quick"
    args = ["sweep", str(EXAMPLES / "quick.toml"), "--sweep-dir", str(sweep_dir), "--dry-run"]
    listed = runner.invoke(app, args)
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        *(r.name for r in quick.runs),
        f"6 runs planned in {sweep_dir}",
    ]
    assert not sweep_dir.exists()
    paper = load_sweep(EXAMPLES / "paper-cifar10.toml")
    assert len(paper.runs) == 25  # Table 8: settings 1-5 x temperatures 0.2-1.0
    assert {r.axes["temperature"] for r in paper.runs} == {0.2, 0.4, 0.6, 0.8, 1.0}
    assert {r.config.setting for r in paper.runs} == {1, 2, 3, 4, 5}
    assert all(r.config.iterations == 30 and r.config.epochs == 20 for r in paper.runs)


@pytest.mark.slow
def test_a_failed_run_is_recorded_the_rest_go_on_and_a_rerun_retries_it(tmp_path: Path) -> None:
    npz = tmp_path / "d.npz"
    shutil.copy(DIGITS_NPZ, npz)
    sweep_file = write(
        tmp_path / "s.toml",
        f'[base]\niterations = 1\nepochs = 1\n[axes]\ndataset = ["npz:{npz}", "digits"]\n',
    )
    sweep_dir = tmp_path / "sweep"
    run_sweep(load_sweep(sweep_file), sweep_dir, NoRuns())  # both valid when planned
    npz.unlink()  # ... and one is gone when it runs
    args = ["sweep", str(sweep_file), "--sweep-dir", str(sweep_dir)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "1 failed" in result.output
    failed_name = f"dataset=npz_{str(npz).replace('/', '_')}"
    status = read_status(sweep_dir)
    assert status[failed_name]["state"] == "failed"
    assert "DatasetError" in status[failed_name]["reason"]
    assert status["dataset=digits"]["state"] == "finished"
    report = runner.invoke(app, ["sweep-report", str(sweep_dir), "--json"])
    rows = {r["run"]: r for r in json.loads(report.stdout)["rows"]}
    assert rows[failed_name]["status"] == "failed" and "not found" in rows[failed_name]["error"]
    assert rows["dataset=digits"]["status"] == "finished"

    shutil.copy(DIGITS_NPZ, npz)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "1 already finished" in again.output and "0 failed" in again.output
    assert read_status(sweep_dir)[failed_name]["state"] == "finished"


def _progress(run_dir: Path) -> tuple[str | None, int]:
    if not (run_dir / "run.sqlite").is_file():
        return None, 0
    with RunStore.open(run_dir) as store:
        return store.status()[0], store.next_index()


def _snapshot(run_dir: Path) -> list[tuple[float, float, str]]:
    with RunStore.open(run_dir) as store:
        return [(r.started_at, r.finished_at, r.code) for r in store.iterations()]


@dataclass(frozen=True)
class Killed:
    sweep_dir: Path
    before: dict[str, list[tuple[float, float, str]]]  # committed iterations at the kill
    rerun_output: str


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    """A sequential sweep SIGKILLed (the whole process group) with its first run finished
    and its second one iteration in, then the same command run again."""
    if not sys.platform.startswith("linux"):
        pytest.skip("process groups, SIGKILL")
    tmp = tmp_path_factory.mktemp("killed")
    sweep_file, sweep_dir = write(tmp / "s.toml", TINY), tmp / "sweep"
    args = ["sweep", str(sweep_file), "--sweep-dir", str(sweep_dir)]
    first, second = sweep_dir / "runs" / "setting=1", sweep_dir / "runs" / "setting=4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lemo_nade", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, killed as a whole below
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _progress(first)[0] == "finished" and _progress(second) == ("running", 1):
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("never saw one run finished and the next one half done")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = {run.name: _snapshot(run) for run in (first, second)}
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return Killed(sweep_dir, before, result.output)


@pytest.mark.slow
def test_a_killed_sweep_is_completed_by_the_same_command(killed_sweep: Killed) -> None:
    before, runs = killed_sweep.before, killed_sweep.sweep_dir / "runs"
    assert [len(before["setting=1"]), len(before["setting=4"])] == [2, 1]
    assert "1 runs ended, 1 already finished, 0 failed" in killed_sweep.rerun_output
    status = read_status(killed_sweep.sweep_dir)  # jobs 1: the rerun ran in this process
    assert status["setting=4"]["worker"].endswith(f":{os.getpid()}")
    assert _snapshot(runs / "setting=1") == before["setting=1"]  # skipped: nothing recomputed
    with RunStore.open(runs / "setting=1") as st:
        assert "resumed" not in [kind for _, kind, _ in st.events()]
    after = _snapshot(runs / "setting=4")  # resumed: the committed iteration kept
    assert after[:1] == before["setting=4"] and len(after) == 2
    with RunStore.open(runs / "setting=4") as st:
        assert st.status() == ("finished", "iterations")
        assert "resumed" in [kind for _, kind, _ in st.events()]


@pytest.mark.slow
def test_jobs_2_gives_the_same_results_as_sequential_and_the_report(
    killed_sweep: Killed, tmp_path: Path
) -> None:
    """The sequential results are the killed-and-resumed sweep's: resuming changes nothing."""
    sweep_file, sweep_dir = write(tmp_path / "s.toml", TINY), tmp_path / "par"
    args = ["sweep", str(sweep_file), "--sweep-dir", str(sweep_dir), "--jobs", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    sequential = results(killed_sweep.sweep_dir)
    assert sorted(sequential) == ["setting=1", "setting=4"]
    assert all(len(v) == 2 for v in sequential.values())
    assert results(sweep_dir) == sequential
    par_workers = workers(sweep_dir)
    assert os.getpid() not in par_workers and len(par_workers) == 2  # two worker processes

    report = runner.invoke(app, ["sweep-report", str(sweep_dir)])
    assert report.exit_code == 0, report.output
    out_dir = sweep_dir / "report"
    doc = json.loads((out_dir / "sweep.json").read_text())
    rows = doc["rows"]
    assert [r["setting"] for r in rows] == [1, 4]
    assert all(r["status"] == "finished" and r["iterations_done"] == 2 for r in rows)
    assert all(0 < r["val_accuracy"] <= 1 and r["params"] > 0 for r in rows)
    assert all(r["search_kwh_pue"] > 0 and r["infer_co2_lbs_per_image"] > 0 for r in rows)
    csv_rows = list(csv.DictReader(io.StringIO((out_dir / "sweep.csv").read_text())))
    assert [float(r["val_accuracy"]) for r in csv_rows] == [r["val_accuracy"] for r in rows]
    assert list(csv_rows[0]) == doc["columns"]
    markdown = (out_dir / "sweep.md").read_text()
    assert markdown == report.stdout
    assert markdown.count("\n| ") == 2 and f"{100 * rows[0]['val_accuracy']:.2f}%" in markdown
    assert (out_dir / "accuracy_vs_energy.png").read_bytes().startswith(b"\x89PNG")


def test_a_run_where_nothing_succeeds_fails_the_sweep_like_it_fails_run(tmp_path: Path) -> None:
    sweep_file = write(
        tmp_path / "s.toml",
        "[base]\niterations = 1\nepochs = 5000\ncandidate_timeout_s = 1\n[axes]\nseed = [0]\n",
    )
    sweep_dir = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(sweep_file), "--sweep-dir", str(sweep_dir)])
    assert result.exit_code == 1, result.output
    assert "1 failed" in result.output
    (status,) = read_status(sweep_dir).values()
    assert status["state"] == "failed"
    assert status["reason"] == "no candidate succeeded (iterations)"
