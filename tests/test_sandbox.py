"""The sandbox end to end: real child processes, real rlimits, real timeouts.

Most tests go through the fork server (a candidate costs about 0.1 s on top of its own
work); the ``fresh`` variants start a new interpreter per candidate (about a second
more each), the fallback path. The hostile candidates are in test_hostile.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from candidates import SMALL_CNN
from lemo_nade import sandbox
from lemo_nade.records import EvalJob, Evaluation, Status
from lemo_nade.sandbox import launch
from proctools import (
    alive,
    descendants,
    eventually,
    live_candidates,
    open_fds,
    rss_mb,
    with_cmdline,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

WRONG_SHAPE = SMALL_CNN.replace(
    "return self.head(x.flatten(1))", "return self.head(x.flatten(1))[:, :3]"
)
NET = "\nclass Net:\n    def __init__(self):\n        raise ValueError('stop here')\n"
MODES = pytest.mark.parametrize("fresh", [False, True], ids=["forkserver", "fresh"])


def _job(code: str, epochs: int = 1, **kw: Any) -> EvalJob:
    return EvalJob(code=code, dataset="digits", data_dir=None, epochs=epochs, batch_size=64, **kw)


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sandbox temp dirs go here, so a test can see they were removed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _candidate_dirs(root: Path) -> list[Path]:
    return list(root.iterdir())  # the fork server keeps no directory


@pytest.fixture
def popens(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """The real Popen, remembering what it started."""
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(subprocess, "Popen", spy)
    return started


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@MODES
def test_good_model_is_ok_with_sane_metrics(
    fresh: bool, own_tmp: Path, popens: list[subprocess.Popen[bytes]]
) -> None:
    evaluation = sandbox.evaluate(_job(SMALL_CNN, epochs=3), timeout_s=120, fresh_process=fresh)
    assert evaluation.status is Status.OK, evaluation.error + evaluation.log_tail
    m = evaluation.metrics
    assert m is not None
    assert m.A2 > 0.5 and m.P == (8 * 9 + 8) + (128 * 10 + 10)
    assert m.F > 0 and m.E1 > 0
    assert "epoch 3/3" in evaluation.log_tail
    assert evaluation.wall_time_s > m.train_time_s > 0
    workers = [p for p in popens if launch.WORKER_MODULE in " ".join(map(str, p.args))]
    if fresh:
        assert len(workers) == 1 and workers[0].returncode == 0
    else:
        assert workers == [] and sandbox.server_pid() is not None
    assert _candidate_dirs(own_tmp) == []  # the temporary directory was removed


def test_fork_server_and_fresh_interpreter_give_the_same_result() -> None:
    """Same seed, same candidate: the fork changes nothing about training."""
    by_server = sandbox.evaluate(_job(SMALL_CNN), timeout_s=120)
    fresh = sandbox.evaluate(_job(SMALL_CNN), timeout_s=120, fresh_process=True)
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
    code: str, status: Status, start: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Path] = []
    monkeypatch.setattr(sandbox, "_run_in", lambda workdir, *a: started.append(workdir))
    evaluation = sandbox.evaluate(_job(code), timeout_s=30)
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
    forward: str, status: Status, needle: str
) -> None:
    code = SMALL_CNN.replace("return self.head(x.flatten(1))", forward)
    evaluation = sandbox.evaluate(_job(code), timeout_s=60)
    assert evaluation.status is status, evaluation.error
    assert needle in evaluation.error and evaluation.metrics is None
    # a failure during training still reports what it spent; one before training, nothing
    if status is Status.FAILED_NAN:
        assert evaluation.failure_kwh is not None and evaluation.failure_kwh > 0
        assert evaluation.spent_kwh == evaluation.failure_kwh
    else:
        assert evaluation.failure_kwh is None and evaluation.spent_kwh == 0.0


def test_build_failure_comes_back_with_the_candidate_traceback() -> None:
    evaluation = sandbox.evaluate(_job("import torch" + NET), timeout_s=60)
    assert evaluation.status is Status.FAILED_BUILD
    assert 'File "candidate.py", line 4, in __init__' in evaluation.error
    assert evaluation.error.endswith("ValueError: stop here")


@MODES
def test_endless_loop_times_out_and_its_group_is_killed(
    fresh: bool, popens: list[subprocess.Popen[bytes]]
) -> None:
    sandbox.isolation()  # the fork server is up: its start is not timed
    code = "class Net:\n    def __init__(self):\n        while True:\n            pass\n"
    start = time.monotonic()
    evaluation = sandbox.evaluate(_job(code), timeout_s=3, fresh_process=fresh)
    elapsed = time.monotonic() - start
    assert evaluation.status is Status.TIMEOUT and "longer than 3 s" in evaluation.error
    assert 3 <= elapsed < 6
    assert eventually(lambda: live_candidates() == [])
    if fresh:
        assert len(popens) == 1 and eventually(lambda: _group_gone(popens[0].pid))


@MODES
def test_timeout_kills_grandchildren_too(fresh: bool) -> None:
    code = (
        "import subprocess\n"
        "subprocess.Popen(['sleep', '61.25'], start_new_session=True)\n"
        "print('STARTED', flush=True)\n"
        "while True:\n    pass\n"
    )
    job = _job(code + NET, compile=True)  # compile on: candidates may start processes
    # a fresh interpreter imports torch first (2-5 s on a busy 2-core machine)
    evaluation = sandbox.run_child(job, timeout_s=10 if fresh else 3, fresh_process=fresh)
    assert evaluation.status is Status.TIMEOUT
    assert "STARTED" in evaluation.log_tail
    if fresh and not sandbox.isolation().namespaces:
        pytest.skip("without a PID namespace a new session escapes the group kill")
    assert eventually(lambda: with_cmdline("sleep 61.25") == [])


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
    sandbox.shutdown()  # the fork server starts again, seeing the key in this environment
    code = (
        "import os\n"
        "print('x' * 200_000)\n"
        "print('ENV', ' '.join(sorted(os.environ)))\n"
        "print('CWD', os.getcwd(), 'HOME', os.environ['HOME'], 'TMP', os.environ['TMPDIR'])\n"
    )
    evaluation = sandbox.run_child(
        _job(code + NET), timeout_s=60, log_cap_bytes=4000, fresh_process=fresh
    )
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
            Status.CRASHED,
            "unreadable result",
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
def test_hostile_or_broken_children_are_classified(code: str, status: Status, needle: str) -> None:
    evaluation = sandbox.run_child(_job(code + NET), timeout_s=30)
    assert evaluation.status is status, evaluation.error
    assert needle in evaluation.error


def test_a_signal_in_a_fresh_interpreter_is_classified_too() -> None:
    code = "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    evaluation = sandbox.run_child(_job(code + NET), timeout_s=30, fresh_process=True)
    assert evaluation.status is Status.CRASHED and "killed by SIGSEGV" in evaluation.error


@MODES
def test_memory_limit_turns_a_huge_allocation_into_oom(fresh: bool) -> None:
    code = "import torch" + NET.replace(
        "raise ValueError('stop here')", "torch.zeros(4_000_000_000)"
    )
    evaluation = sandbox.evaluate(
        _job(code, threads=1), timeout_s=60, memory_limit_mb=3000, fresh_process=fresh
    )
    assert evaluation.status is Status.OOM, evaluation.error
    assert "can't allocate memory" in evaluation.error


def _interrupt_soon(delay_s: float) -> threading.Timer:
    """Ctrl-C: SIGINT to this process, raised as KeyboardInterrupt in the main thread."""
    timer = threading.Timer(delay_s, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@MODES
def test_interrupt_while_waiting_still_kills_the_child(
    fresh: bool, popens: list[subprocess.Popen[bytes]]
) -> None:
    sandbox.isolation()  # the fork server is up before the clock starts
    server = sandbox.server_pid()
    code = "class Net:\n    def __init__(self):\n        while True:\n            pass\n"
    # A shell's background job starts with SIGINT ignored; Ctrl-C needs Python's handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = _interrupt_soon(1.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            sandbox.evaluate(_job(code), timeout_s=60, fresh_process=fresh)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert eventually(lambda: live_candidates() == [])
    if fresh:
        assert len(popens) == 1 and popens[0].returncode is not None
        assert eventually(lambda: _group_gone(popens[0].pid))
    else:  # the server was killed with its child; the next candidate gets a new one
        assert server is not None and not alive(server)
        assert sandbox.evaluate(_job(WRONG_SHAPE), timeout_s=60).status is Status.FAILED_SHAPE
        assert sandbox.server_pid() not in (None, server)


def test_a_server_killed_between_candidates_is_replaced() -> None:
    sandbox.isolation()
    first = sandbox.server_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert eventually(lambda: not alive(first))
    assert sandbox.evaluate(_job(WRONG_SHAPE), timeout_s=60).status is Status.FAILED_SHAPE
    assert sandbox.server_pid() not in (None, first)


def test_a_server_dying_mid_candidate_is_a_crash_and_the_run_goes_on() -> None:
    sandbox.isolation()
    server = sandbox.server_pid()
    assert server is not None
    code = "import time\nprint('RUNNING', flush=True)\ntime.sleep(60)\n" + NET
    killer = threading.Timer(1.5, os.kill, (server, signal.SIGKILL))
    killer.start()
    try:
        evaluation = sandbox.run_child(_job(code), timeout_s=30)
    finally:
        killer.cancel()
    assert evaluation.status is Status.CRASHED
    assert "the fork server died while running the candidate" in evaluation.error
    assert eventually(lambda: live_candidates() == [])
    assert sandbox.evaluate(_job(WRONG_SHAPE), timeout_s=60).status is Status.FAILED_SHAPE


def test_no_fork_server_means_a_fresh_interpreter_per_candidate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = launch.ForkServer()
    monkeypatch.setattr(launch, "SERVER", broken)
    monkeypatch.setattr(launch, "SERVER_MODULE", "lemo_nade.no_such_module")
    monkeypatch.setattr(launch, "SERVER_START_ATTEMPTS", 2)
    results = [sandbox.evaluate(_job(WRONG_SHAPE), timeout_s=60) for _ in range(3)]
    assert [r.status for r in results] == [Status.FAILED_SHAPE] * 3
    assert "fork server failed to start" in capsys.readouterr().err
    assert broken.pid() is None


def test_isolation_reports_what_the_kernel_offers() -> None:
    features = sandbox.isolation()
    lines = features.describe().splitlines()
    assert lines[0].startswith("PID+network namespaces: ")
    assert any(line.startswith("Landlock: ") for line in lines)
    if not features.namespaces:  # then the probe says why
        assert any("namespaces" in e for e in features.errors)


def test_confinement_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    if not sandbox.isolation().namespaces:
        pytest.skip("no PID namespaces here: nothing to turn off")
    code = "import os\nraise ValueError(f'PID {os.getpid()}')\n" + NET
    inside = sandbox.run_child(_job(code), timeout_s=30)
    assert inside.status is Status.FAILED_BUILD and inside.error.endswith("ValueError: PID 2")
    monkeypatch.setenv("LEMO_NADE_CONFINE", "0")
    outside = sandbox.run_child(_job(code), timeout_s=30)
    assert outside.status is Status.FAILED_BUILD, outside.error
    assert not outside.error.endswith("ValueError: PID 2")


def test_no_leaks_across_100_candidates(own_tmp: Path) -> None:
    """Process hygiene: 100 tiny candidates leave no process, fd, temp dir or memory behind."""

    def run(n: int) -> list[Evaluation]:
        return [sandbox.evaluate(_job(WRONG_SHAPE), timeout_s=60) for _ in range(n)]

    assert {e.status for e in run(5)} == {Status.FAILED_SHAPE}  # warm: server up, caches full
    server = sandbox.server_pid()
    assert server is not None
    family, fds = sorted(descendants(os.getpid())), open_fds()
    rss, server_rss = rss_mb(os.getpid()), rss_mb(server)
    start = time.monotonic()
    evaluations = run(100)
    elapsed = time.monotonic() - start
    assert {e.status for e in evaluations} == {Status.FAILED_SHAPE}
    assert eventually(lambda: sorted(descendants(os.getpid())) == family)
    assert sandbox.server_pid() == server
    assert open_fds() == fds
    assert _candidate_dirs(own_tmp) == []
    assert rss_mb(os.getpid()) - rss < 20, "the run process grew"
    assert rss_mb(server) - server_rss < 20, "the fork server grew"
    assert elapsed < 100 * 0.5 * 2, f"{elapsed:.1f} s for 100 candidates"


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


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_the_fork_server_preloads_the_training_imports_without_starting_threads(
    tmp_path: Path,
) -> None:
    """Children inherit torch._dynamo (Adam imports it: seconds per candidate otherwise);
    the server must stay single-threaded for fork to be safe, and create no directory."""
    code = (
        "import os, sys\n"
        "from lemo_nade.engine import forkserver\n"
        "forkserver.preload()\n"
        "print('torch._dynamo' in sys.modules, len(os.listdir('/proc/self/task')))\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "1"]
    assert list(tmp_path.iterdir()) == []  # torch's compile cache was not made in TMPDIR
