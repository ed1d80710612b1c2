"""The sandbox end to end: real child processes, real rlimits, what comes back.

Most tests go through the session's fork server (the ``box`` fixture: a candidate costs
about 0.1 s on top of its own work); the ``fresh`` variants start a new interpreter per
candidate (about a second more each), the fallback path. Timeouts, interrupts and the
fork server's life are in test_sandbox_lifecycle.py; hostile candidates in
test_hostile_*.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from candidates import SMALL_CNN
from lemo_nade import sandbox
from lemo_nade.records import Status
from lemo_nade.sandbox import Sandbox, launch
from proctools import alive, eventually
from sandboxes import MODES, NET, candidate_dirs, job

pytest_plugins = ["sandbox_fixtures"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


@MODES
def test_good_model_is_ok_with_sane_metrics(
    fresh: bool, box: Sandbox, own_tmp: Path, popens: list[subprocess.Popen[bytes]]
) -> None:
    evaluation = box.evaluate(job(SMALL_CNN, epochs=3), timeout_s=120, fresh_process=fresh)
    assert evaluation.status is Status.OK, evaluation.error + evaluation.log_tail
    m = evaluation.metrics
    assert m is not None
    assert m.A2 > 0.5 and m.P == (8 * 9 + 8) + (128 * 10 + 10)
    assert m.F > 0 and m.E1 > 0
    assert "epoch 3/3" in evaluation.log_tail
    assert evaluation.wall_time_s > m.train_time_s > 0
    workers = [p for p in popens if launch.WORKER_MODULE in " ".join(map(str, p.args))]
    if fresh:  # the prepare (once per sandbox), train and measure children
        assert 2 <= len(workers) <= 3 and all(p.returncode == 0 for p in workers)
    else:
        assert workers == [] and box.server_pid() is not None
    assert candidate_dirs(own_tmp) == []  # the temporary directory was removed


def test_fork_server_and_fresh_interpreter_give_the_same_result(box: Sandbox) -> None:
    """Same seed, same candidate: the fork changes nothing about training."""
    by_server = box.evaluate(job(SMALL_CNN), timeout_s=120)
    fresh = box.evaluate(job(SMALL_CNN), timeout_s=120, fresh_process=True)
    assert by_server.status is fresh.status is Status.OK, by_server.error + fresh.error
    assert by_server.metrics is not None and fresh.metrics is not None
    assert by_server.metrics.train_loss == fresh.metrics.train_loss
    assert by_server.metrics.A2 == fresh.metrics.A2


@pytest.mark.parametrize(
    ("code", "status", "start"),
    [
        ("class Net(:\n    pass\n", Status.FAILED_SYNTAX, "syntax: line 1"),
        ("import os" + NET, Status.FAILED_POLICY, "import: line 1: import of 'os'"),
    ],
)
def test_rejected_code_starts_no_child(
    code: str, status: Status, start: str, box: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Path] = []
    monkeypatch.setattr(box, "_run_in", lambda workdir, *a: started.append(workdir))
    evaluation = box.evaluate(job(code), timeout_s=30)
    assert evaluation.status is status and evaluation.error.startswith(start)
    assert started == []


@pytest.mark.parametrize(
    ("forward", "status", "needle"),
    [
        (
            "return self.head(x.flatten(1))[:, :3]",
            Status.FAILED_SHAPE,
            "is [2, 3]; expected [2, 10]",
        ),
        ("return self.head(x.flatten(1)) / 0.0", Status.FAILED_NAN, "training loss became"),
    ],
)
def test_shape_and_nan_failures_come_back_from_the_child(
    forward: str, status: Status, needle: str, box: Sandbox
) -> None:
    code = SMALL_CNN.replace("return self.head(x.flatten(1))", forward)
    evaluation = box.evaluate(job(code), timeout_s=60)
    assert evaluation.status is status, evaluation.error
    assert needle in evaluation.error and evaluation.metrics is None
    # what the candidate's process spent is measured from outside it, however it ended
    assert evaluation.failure_kwh is not None and evaluation.failure_kwh > 0
    assert evaluation.spent_kwh == evaluation.failure_kwh


def test_build_failure_comes_back_with_the_candidate_traceback(box: Sandbox) -> None:
    evaluation = box.evaluate(job("import torch" + NET), timeout_s=60)
    assert evaluation.status is Status.FAILED_BUILD
    assert 'File "candidate.py", line 4, in __init__' in evaluation.error
    assert evaluation.error.endswith("ValueError: stop here")


def test_child_env_keeps_only_the_allow_list() -> None:
    parent = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "OPENAI_API_KEY": "sk-secret",
        "GITHUB_TOKEN": "ghp-secret",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "HOME": "/home/me",
        "TMPDIR": "/var/tmp",
    }
    assert launch.child_env(parent, "/w") == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "HOME": "/w",
        "TMPDIR": "/w",
    }


@MODES
def test_child_runs_scrubbed_in_its_own_temp_dir_and_log_is_capped(
    fresh: bool, own_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    code = (
        "import os\n"
        "print('x' * 200_000)\n"
        "print('ENV', ' '.join(sorted(os.environ)))\n"
        "print('CWD', os.getcwd(), 'HOME', os.environ['HOME'], 'TMP', os.environ['TMPDIR'])\n"
    )
    with Sandbox() as own:  # its fork server starts now, seeing the key in this environment
        evaluation = own.evaluate(
            job(code + NET),
            timeout_s=60,
            log_cap_bytes=4000,
            fresh_process=fresh,
            check_policy=False,
        )
        server = own.server_pid()
    assert (server is None) == fresh  # a fresh interpreter does not start the server
    if server is not None:  # the sandbox stopped its server when closed
        assert eventually(lambda: not alive(server)) and own.server_pid() is None
    assert evaluation.status is Status.FAILED_BUILD, evaluation.error
    tail = evaluation.log_tail
    assert len(tail.encode()) <= 4000 and tail.startswith("xxx")  # the head was cut
    assert "ValueError: stop here" in evaluation.error
    assert "sk-must-not-leak" not in tail and "OPENAI_API_KEY" not in tail
    env_line = re.search(r"^ENV (.*)$", tail, re.MULTILINE)
    assert env_line is not None
    allowed = {*launch.KEPT_ENV_VARS, "HOME", "TMPDIR", "LC_CTYPE"}  # LC_CTYPE: PEP 538
    assert set(env_line.group(1).split()) <= allowed
    where = re.search(r"^CWD (\S+) HOME (\S+) TMP (\S+)$", tail, re.MULTILINE)
    assert where is not None and len(set(where.groups())) == 1
    workdir = Path(where.group(1))
    assert workdir.parent == own_tmp and not workdir.exists()


@pytest.mark.parametrize(
    ("code", "status", "needle"),
    [
        ("import os\nos._exit(7)\n", Status.CRASHED, "exited with code 7 and wrote no result"),
        (
            "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
            Status.CRASHED,
            "killed by SIGSEGV",
        ),
        (
            "import os\nopen('result.json', 'w').write('{not json')\nos._exit(0)\n",
            Status.FAILED_RESULT,
            "failed_result: not JSON",
        ),
        ("import os\nos.mkfifo('result.json')\nos._exit(0)\n", Status.CRASHED, "wrote no result"),
        # an allocation failure the worker could not report (e.g. in native code)
        (
            "import os, sys\nsys.stderr.write('MemoryError\\n')\nos._exit(1)\n",
            Status.OOM,
            "out of memory: the child wrote no result",
        ),
    ],
)
def test_hostile_or_broken_children_are_classified(
    code: str, status: Status, needle: str, box: Sandbox
) -> None:
    evaluation = box.evaluate(job(code + NET), timeout_s=30, check_policy=False)
    assert evaluation.status is status, evaluation.error
    assert needle in evaluation.error


def test_a_signal_in_a_fresh_interpreter_is_classified_too(
    popens: list[subprocess.Popen[bytes]],
) -> None:
    """Also: ``sandbox.evaluate`` (one candidate, no Sandbox kept) starts no fork server."""
    code = "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    evaluation = sandbox.evaluate(job(code + NET), 30, check_policy=False)
    assert evaluation.status is Status.CRASHED and "killed by SIGSEGV" in evaluation.error
    started = [" ".join(map(str, p.args)) for p in popens]  # prepare, then the candidate
    assert len(started) == 2 and all(launch.WORKER_MODULE in s for s in started)


@MODES
def test_memory_limit_turns_a_huge_allocation_into_oom(fresh: bool, box: Sandbox) -> None:
    code = "import torch" + NET.replace(
        "raise ValueError('stop here')", "torch.zeros(4_000_000_000)"
    )
    evaluation = box.evaluate(
        job(code, threads=1), timeout_s=60, memory_limit_mb=3000, fresh_process=fresh
    )
    assert evaluation.status is Status.OOM, evaluation.error
    assert "can't allocate memory" in evaluation.error


def test_isolation_reports_what_the_kernel_offers(box: Sandbox) -> None:
    features = box.isolation()
    lines = features.describe().splitlines()
    assert lines[0].startswith("PID+network namespaces: ")
    assert any(line.startswith("Landlock: ") for line in lines)
    if not features.namespaces:  # then the probe says why
        assert any("namespaces" in e for e in features.errors)


def test_confinement_can_be_turned_off(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    if not box.isolation().namespaces:
        pytest.skip("no PID namespaces here: nothing to turn off")
    code = "import os\nraise ValueError(f'PID {os.getpid()}')\n" + NET
    inside = box.evaluate(job(code), timeout_s=30, check_policy=False)
    assert inside.status is Status.FAILED_BUILD and inside.error.endswith("ValueError: PID 2")
    monkeypatch.setenv("LEMO_NADE_CONFINE", "0")
    outside = box.evaluate(job(code), timeout_s=30, check_policy=False)
    assert outside.status is Status.FAILED_BUILD, outside.error
    assert not outside.error.endswith("ValueError: PID 2")


def test_temp_dirs_of_dead_runs_are_swept(own_tmp: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = own_tmp / f"lemo-nade-{dead.pid}-abc123"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "weights.bin").write_bytes(b"x" * 100)
    live = own_tmp / f"lemo-nade-{os.getpid()}-def456"  # this process is alive: kept
    other = own_tmp / "lemo-nade-notes"  # not a candidate dir: kept
    live.mkdir()
    other.mkdir()
    assert sandbox.sweep_stale_workdirs() == [stale.name]
    assert not stale.exists() and live.exists() and other.exists()
