"""The whole loop through the CLI: run, show, resume after SIGKILL, failures recorded.

These run real candidates in real sandboxed children on the built-in digits data,
with few epochs so the file stays around half a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lemo_nade import sandbox
from lemo_nade.cli import app
from lemo_nade.records import EvalJob, Evaluation, Status
from lemo_nade.runs import create_run
from lemo_nade.search import run_search
from lemo_nade.store import RunStore
from proctools import alive, cmdline, comm, descendants

runner = CliRunner()
pytest_plugins = ["sandbox_fixtures"]
pytestmark = pytest.mark.usefixtures("shared_sandbox")  # one fork server for these runs
FAST = ["--epochs", "2", "--seed", "3"]


def only_run_dir(runs: Path) -> Path:
    (run_dir,) = list(runs.iterdir())
    return run_dir


def test_run_then_show_json(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["run", "--iterations", "3", *FAST, "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert "★" in result.output  # the best model is marked in the final table
    run_dir = only_run_dir(runs)
    shown = runner.invoke(app, ["show", str(run_dir), "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert doc["status"] == "finished" and doc["stop_reason"] == "iterations"
    rows = doc["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4]  # 3 searched, 2 promoted
    assert [r["promotion_epochs"] for r in rows] == [None, None, None, 4, 4]  # 2 x --epochs
    ranked = sorted(rows[:3], key=lambda r: (-r["CM"], r["iteration"]))
    assert [r["parent"] for r in rows[3:]] == [r["iteration"] for r in ranked[:2]]
    assert (doc["summary"]["iterations"], doc["summary"]["promotions"]) == (3, 2)
    assert all(r["status"] == "ok" for r in rows)
    assert all(0 < r["A2"] <= 1 and r["P"] > 0 and r["F"] > 0 for r in rows)
    assert all(r["energy_source"] == "estimate" for r in rows)
    best = max(rows, key=lambda r: r["CM"])
    assert best["best"] and doc["summary"]["best_iteration"] == best["iteration"]
    assert rows[0]["parent"] is None and rows[1]["parent"] == 0
    assert (run_dir / "candidates" / "002.py").read_text().count("class Net(nn.Module)") == 1
    table = runner.invoke(app, ["show", str(run_dir)], env={"COLUMNS": "300"})
    assert table.exit_code == 0 and "ESTIMATE" in table.output
    assert (
        "(promotion: 4 epochs)" in table.output and "iterations: 3; promotions: 2;" in table.output
    )


def test_the_first_model_shows_thresholds_its_rules_cannot_cross(tmp_path: Path) -> None:
    """Without ``pursue`` (the paper's search) a met energy threshold stops its rule, and
    the run says so; with it (the default) the rule fires anyway, and no warning."""
    args = ["run", "--iterations", "1", "--epochs", "1", "--setting", "2", "--set", "promote=0"]
    result = runner.invoke(app, [*args, "--set", "pursue=false", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "warning: TE1 = 0.001 kWh is " in result.output
    assert "--set thresholds.TE2=" in result.output
    pursued = runner.invoke(app, [*args, "--runs-dir", str(tmp_path)])
    assert pursued.exit_code == 0 and "warning" not in pursued.output, pursued.output
    asked = pursued.output.split("next:")[1].splitlines()[0].split()
    assert {"AD", "AWI"} <= set(asked)  # the energy rules' (TA out of reach: ACL beats RCL)
    plain = result.output.split("next:")[1].splitlines()[0].split()
    assert not {"AD", "AWI"} & set(plain)


@pytest.mark.parametrize(
    ("flag", "value"), [("--max-energy-kwh", "1e-12"), ("--max-hours", "1e-7")]
)
def test_energy_and_time_budgets_stop_the_run_between_iterations(
    tmp_path: Path, flag: str, value: str
) -> None:
    runs = tmp_path / "runs"
    args = ["run", "--iterations", "3", *FAST, flag, value, "--runs-dir", str(runs), "--json"]
    result = runner.invoke(app, args)
    run_dir = only_run_dir(runs)
    doc = json.loads(runner.invoke(app, ["show", str(run_dir), "--json"]).stdout)
    assert doc["stop_reason"] == flag.removeprefix("--").replace("-", "_")
    assert doc["status"] == "stopped"
    if flag == "--max-energy-kwh":  # the first candidate is recorded whole, then it stops
        assert result.exit_code == 0, result.output
        assert [r["status"] for r in doc["iterations"]] == ["ok"]
        assert doc["summary"]["search_energy_kwh"] > 1e-12
    elif doc["iterations"]:  # a very fast machine trained it within the 1 s minimum
        assert [r["status"] for r in doc["iterations"]] == ["ok"]
    else:  # the time left (0.36 ms, at least 1 s) cut the candidate: it is not blamed
        assert result.exit_code == 1, result.output
        assert "the max_hours budget ran out before any candidate succeeded" in result.stderr
        assert f"resume {run_dir} --max-hours VALUE" in result.stderr
        with RunStore.open(run_dir) as st:
            assert [kind for _, kind, _ in st.events()].count("budget_cut") == 1


@pytest.mark.parametrize("as_json", [False, True])
def test_a_run_where_nothing_succeeds_exits_1_with_or_without_json(
    tmp_path: Path, as_json: bool
) -> None:
    args = ["run", "--iterations", "1", "--epochs", "5000", "--runs-dir", str(tmp_path)]
    args += ["--set", "candidate_timeout_s=1"] + (["--json"] if as_json else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "no candidate succeeded" in result.stderr
    if as_json:
        assert json.loads(result.stdout)["summary"]["statuses"] == {"timeout": 1}


def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    run = ["run", "--runs-dir", str(tmp_path / "r")]
    cases = [
        ([*run, "--setting", "9"], "setting"),
        ([*run, "--set", "thresholds.TA9=1"], "TA9"),
        ([*run, "--dataset", "cifar10", "--data-dir", str(tmp_path / "nope")], "data_dir"),
        ([*run, "--set", "epochs=abc"], "epochs"),
        ([*run, "--config", str(tmp_path / "missing.toml")], "missing.toml"),
        (["resume", str(tmp_path)], "not a run directory"),
        (["show", str(tmp_path)], "not a run directory"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and needle.lower() in lines[0].lower(), (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # nothing is created for bad input


def test_a_failing_candidate_is_recorded_and_its_error_goes_back(tmp_path: Path) -> None:
    """Candidate 1 crashes; the loop records it, goes on, and tells the architect why."""
    from lemo_nade.config import build_config

    cfg = build_config({}, {"iterations": 3, "epochs": 1, "seed": 1, "max_repairs": 0}, {})
    cfg = cfg.model_copy(update={"promote": 0})  # the search's three candidates alone
    run_dir = create_run(cfg, tmp_path)
    calls: list[EvalJob] = []

    def flaky(job: EvalJob, timeout_s: float, memory_limit_mb: int | None) -> Evaluation:
        calls.append(job)
        if len(calls) == 2:
            job = EvalJob.from_dict(
                {**job.to_dict(), "code": job.code + "\nraise RuntimeError('boom')\n"}
            )
        return sandbox.evaluate(job, timeout_s, memory_limit_mb)

    seen: list[str | None] = []
    from lemo_nade.search import Progress

    result = run_search(
        run_dir, Progress(on_start=lambda idx, req: seen.append(req.last_error)), evaluate=flaky
    )
    statuses = [r.status for r in result.records]
    assert statuses == [Status.OK, Status.FAILED_BUILD, Status.OK]
    assert "boom" in result.records[1].evaluation.error
    assert seen[0] is None and seen[1] is None and seen[2] is not None and "boom" in seen[2]
    assert result.records[2].parent_idx == 0  # the parent is the last *good* candidate
    assert result.best is not None and result.best.idx in (0, 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_sigkill_mid_iteration_then_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["run", "--iterations", "4", "--epochs", "3", "--seed", "5", "--set", "promote=0"]
    args += ["--runs-dir", str(runs)]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lemo_nade", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    worker = None
    family: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and worker is None:
            run_dirs = list(runs.glob("*/run.sqlite")) if runs.exists() else []
            if run_dirs:
                with RunStore.open(run_dirs[0].parent) as st:
                    done = st.next_index()
                if done >= 2:  # two committed; now catch the third in training
                    family = descendants(proc.pid)
                    workers = [
                        c
                        for c in family
                        if comm(c) == "lemo-candidate" or "engine.worker" in cmdline(c)
                    ]
                    worker = workers[0] if workers else None
            time.sleep(0.05)
        assert worker is not None, "never saw a candidate in training"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # PR_SET_PDEATHSIG: the training child (and the fork server) die with the run, no
    # orphan keeps training.
    deadline = time.monotonic() + 10
    while any(alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker in family and not any(alive(p) for p in family)

    run_dir = only_run_dir(runs)
    with RunStore.open(run_dir) as st:
        before = st.iterations()
        assert st.status()[0] == "interrupted"  # it died without a chance to say so
    assert len(before) >= 2

    result = runner.invoke(app, ["resume", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    with RunStore.open(run_dir) as st:
        after = st.iterations()
        assert st.status() == ("finished", "iterations")
        assert "resumed" in [kind for _, kind, _ in st.events()]
    assert [r.idx for r in after] == [0, 1, 2, 3]
    for old, new in zip(before, after, strict=False):  # committed iterations untouched
        assert (old.code, old.evaluation, old.cm) == (new.code, new.evaluation, new.cm)
    candidates = sorted(p.name for p in (run_dir / "candidates").iterdir())
    # each candidate's code and the graph that was measured (the search protocol's hand-over)
    assert candidates == sorted(f"{i:03d}.{ext}" for i in range(4) for ext in ("py", "pt2"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_says_how_to_continue_and_keeps_what_was_done(
    tmp_path: Path, sig: signal.Signals
) -> None:
    runs = tmp_path / "runs"
    # far more iterations than can run before the signal: a loaded machine once finished
    # all six of an earlier version before the poll below saw the first one
    args = ["run", "--iterations", "60", "--epochs", "3", "--runs-dir", str(runs)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lemo_nade", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: under `nohup ... &` the tests inherit SIGINT ignored, and a
        # child that inherits that ignores Ctrl-C, as a background job should
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and done < 1:
            found = list(runs.glob("*/run.sqlite")) if runs.exists() else []
            if found:
                with RunStore.open(found[0].parent) as st:
                    done = st.next_index()
            time.sleep(0.05)
        assert done >= 1, "no iteration was committed"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = only_run_dir(runs)
    assert proc.returncode == 130, stderr
    assert f"Continue with: lemo-nade resume {run_dir}\n" in stderr  # unbroken, to copy
    assert "Traceback" not in stderr
    with RunStore.open(run_dir) as st:
        assert len(st.iterations()) >= 1
        assert st.status() == ("stopped", "interrupted")


def test_a_build_failure_is_repaired_inside_the_iteration(tmp_path: Path) -> None:
    """With repairs on, the broken attempt and its fix are both kept in one iteration."""
    from lemo_nade.config import build_config
    from lemo_nade.search import Progress

    cfg = build_config(
        {}, {"iterations": 2, "epochs": 1, "seed": 1, "max_repairs": 2, "promote": 0}, {}
    )
    run_dir = create_run(cfg, tmp_path)
    calls: list[EvalJob] = []

    def flaky(job: EvalJob, timeout_s: float, memory_limit_mb: int | None) -> Evaluation:
        calls.append(job)
        if len(calls) == 2:
            broken = job.code + "\nraise RuntimeError('boom')\n"
            job = EvalJob.from_dict({**job.to_dict(), "code": broken})
        return sandbox.evaluate(job, timeout_s, memory_limit_mb)

    result = run_search(run_dir, Progress(), evaluate=flaky)
    assert [r.status for r in result.records] == [Status.OK, Status.OK]
    second = result.records[1]
    assert [a.status for a in second.attempts] == [Status.FAILED_BUILD, Status.OK]
    assert "boom" in second.attempts[0].error
    assert len(calls) == 3
    with RunStore.open(run_dir) as st:  # the attempts survive the round trip
        stored = st.iterations()[1].attempts
    assert [a.attempt for a in stored] == [0, 1]


def test_a_stopped_or_finished_run_goes_on_with_a_larger_budget(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["run", "--iterations", "3", *FAST, "--set", "promote=0", "--max-energy-kwh", "1e-12"]
    args += ["--runs-dir"]
    assert runner.invoke(app, [*args, str(runs)]).exit_code == 0
    run_dir = only_run_dir(runs)
    with RunStore.open(run_dir) as st:
        assert st.status() == ("stopped", "max_energy_kwh") and st.next_index() == 1
    # the energy budget raised: the run goes on to its 3 iterations, nothing redone
    more = runner.invoke(app, ["resume", str(run_dir), "--max-energy-kwh", "1", "--json"])
    assert more.exit_code == 0, more.output
    doc = json.loads(more.stdout)
    assert doc["status"] == "finished" and len(doc["iterations"]) == 3
    assert doc["config"]["max_energy_kwh"] == 1.0
    # finished: a plain resume says how to go on; fewer iterations than done is refused
    plain = runner.invoke(app, ["resume", str(run_dir)])
    assert plain.exit_code == 0 and "already finished" in plain.stderr
    assert f"resume {run_dir} --iterations 13" in plain.stderr
    fewer = runner.invoke(app, ["resume", str(run_dir), "--iterations", "3"])
    assert fewer.exit_code == 2 and "the run already has 3" in fewer.stderr
    assert runner.invoke(app, ["resume", str(run_dir), "--iterations", "4"]).exit_code == 0
    with RunStore.open(run_dir) as st:
        assert st.next_index() == 4 and st.status() == ("finished", "iterations")
        changes = [data for _, kind, data in st.events() if kind == "config_changed"]
        assert changes == [{"max_energy_kwh": [1e-12, 1.0]}, {"iterations": [3, 4]}]
        assert json.loads(st.config_json())["iterations"] == 4


CIFAR_SUBSET = Path(__file__).parents[2] / "shared/data/cifar-10-subset"


@pytest.mark.skipif(not CIFAR_SUBSET.is_dir(), reason="CIFAR-10 subset not present")
def test_a_corrupt_data_file_stops_the_run_as_bad_input_and_resume_goes_on(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data" / "cifar-10-batches-py"
    shutil.copytree(CIFAR_SUBSET / "cifar-10-batches-py", data)
    good = (data / "data_batch_2").read_bytes()
    (data / "data_batch_2").chmod(0o644)
    (data / "data_batch_2").write_bytes(os.urandom(len(good)))
    # doctor reads the files whole, as the sandbox will
    check = ["doctor", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--json"]
    doctor = runner.invoke(app, check)
    assert doctor.exit_code == 1
    found = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert found["dataset"]["status"] == "fail" and "data_batch_2" in found["dataset"]["detail"]
    runs = tmp_path / "runs"
    args = ["run", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--iterations"]
    args += ["1", "--epochs", "1", "--set", "search_subset=5", "--runs-dir", str(runs)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "data_batch_2" in result.stderr and "Continue with" not in result.stderr
    assert "fix the data, then continue with: lemo-nade resume" in result.stderr
    run_dir = only_run_dir(runs)
    with RunStore.open(run_dir) as st:  # the candidate is not blamed: nothing recorded
        assert st.next_index() == 0 and st.status()[1].startswith("data_error: ")
    (data / "data_batch_2").write_bytes(good)
    fixed = {c["check"]: c for c in json.loads(runner.invoke(app, check).stdout)["checks"]}
    assert fixed["dataset"]["status"] == "ok" and "5,085 training" in fixed["dataset"]["detail"]
    resumed = runner.invoke(app, ["resume", str(run_dir), "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["iterations"][0]["status"] == "ok"
