"""The sandbox's processes over time: wall-clock timeouts, Ctrl-C, the fork server dying
or failing to start, and hygiene over many candidates. Real processes throughout; the
``box`` fixture is the session's Sandbox (sandbox_fixtures.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lemo_nade.records import Evaluation, Status
from lemo_nade.sandbox import Sandbox, launch
from proctools import (
    alive,
    descendants,
    eventually,
    live_candidates,
    open_fds,
    rss_mb,
    with_cmdline,
)
from sandboxes import ENDLESS, MODES, NET, WRONG_SHAPE, candidate_dirs, group_gone, job

pytest_plugins = ["sandbox_fixtures"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


@MODES
def test_endless_loop_times_out_and_its_group_is_killed(
    fresh: bool, box: Sandbox, popens: list[subprocess.Popen[bytes]]
) -> None:
    box.isolation()  # the fork server is up: its start is not timed
    start = time.monotonic()
    evaluation = box.evaluate(job(ENDLESS), timeout_s=3, fresh_process=fresh)
    elapsed = time.monotonic() - start
    assert evaluation.status is Status.TIMEOUT and "longer than 3 s" in evaluation.error
    assert 3 <= elapsed < 6
    assert eventually(lambda: live_candidates() == [])
    if fresh:
        assert len(popens) == 1 and eventually(lambda: group_gone(popens[0].pid))


@MODES
def test_timeout_kills_grandchildren_too(fresh: bool, box: Sandbox) -> None:
    code = (
        "import subprocess\n"
        "subprocess.Popen(['sleep', '61.25'], start_new_session=True)\n"
        "print('STARTED', flush=True)\n"
        "while True:\n    pass\n"
    )
    compiled = job(code + NET, compile=True)  # compile on: candidates may start processes
    # a fresh interpreter imports torch first (2-5 s on a busy 2-core machine)
    timeout_s = 10 if fresh else 3
    evaluation = box.evaluate(compiled, timeout_s, fresh_process=fresh, check_policy=False)
    assert evaluation.status is Status.TIMEOUT
    assert "STARTED" in evaluation.log_tail
    if fresh and not box.isolation().namespaces:
        pytest.skip("without a PID namespace a new session escapes the group kill")
    assert eventually(lambda: with_cmdline("sleep 61.25") == [])


def _interrupt_soon(delay_s: float) -> threading.Timer:
    """Ctrl-C: SIGINT to this process, raised as KeyboardInterrupt in the main thread."""
    timer = threading.Timer(delay_s, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@MODES
def test_interrupt_while_waiting_still_kills_the_child(
    fresh: bool, box: Sandbox, popens: list[subprocess.Popen[bytes]]
) -> None:
    box.isolation()  # the fork server is up before the clock starts
    server = box.server_pid()
    # A shell's background job starts with SIGINT ignored; Ctrl-C needs Python's handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = _interrupt_soon(1.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            box.evaluate(job(ENDLESS), timeout_s=60, fresh_process=fresh)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert eventually(lambda: live_candidates() == [])
    if fresh:
        assert len(popens) == 1 and popens[0].returncode is not None
        assert eventually(lambda: group_gone(popens[0].pid))
    else:  # the server was killed with its child; the next candidate gets a new one
        assert server is not None and not alive(server)
        assert box.evaluate(job(WRONG_SHAPE), timeout_s=60).status is Status.FAILED_SHAPE
        assert box.server_pid() not in (None, server)


def test_a_server_killed_between_candidates_is_replaced(box: Sandbox) -> None:
    box.isolation()
    first = box.server_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert eventually(lambda: not alive(first))
    assert box.evaluate(job(WRONG_SHAPE), timeout_s=60).status is Status.FAILED_SHAPE
    assert box.server_pid() not in (None, first)


def test_a_server_dying_mid_candidate_is_a_crash_and_the_run_goes_on(box: Sandbox) -> None:
    box.isolation()
    server = box.server_pid()
    assert server is not None
    code = "import time\nprint('RUNNING', flush=True)\ntime.sleep(60)\n" + NET
    killer = threading.Timer(1.5, os.kill, (server, signal.SIGKILL))
    killer.start()
    try:
        evaluation = box.evaluate(job(code), timeout_s=30, check_policy=False)
    finally:
        killer.cancel()
    assert evaluation.status is Status.CRASHED
    assert "the fork server died while running the candidate" in evaluation.error
    assert eventually(lambda: live_candidates() == [])
    assert box.evaluate(job(WRONG_SHAPE), timeout_s=60).status is Status.FAILED_SHAPE


def test_no_fork_server_means_a_fresh_interpreter_per_candidate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(launch, "SERVER_MODULE", "lemo_nade.no_such_module")
    monkeypatch.setattr(launch, "SERVER_START_ATTEMPTS", 2)
    with Sandbox() as broken:
        results = [broken.evaluate(job(WRONG_SHAPE), timeout_s=60) for _ in range(3)]
        assert broken.server_pid() is None
    assert [r.status for r in results] == [Status.FAILED_SHAPE] * 3
    assert "fork server failed to start" in capsys.readouterr().err


def test_no_leaks_across_100_candidates(box: Sandbox, own_tmp: Path) -> None:
    """Process hygiene: 100 tiny candidates leave no process, fd, temp dir or memory behind."""

    def run(n: int) -> list[Evaluation]:
        return [box.evaluate(job(WRONG_SHAPE), timeout_s=60) for _ in range(n)]

    assert {e.status for e in run(5)} == {Status.FAILED_SHAPE}  # warm: server up, caches full
    server = box.server_pid()
    assert server is not None
    family, fds = sorted(descendants(os.getpid())), open_fds()
    rss, server_rss = rss_mb(os.getpid()), rss_mb(server)
    start = time.monotonic()
    evaluations = run(100)
    elapsed = time.monotonic() - start
    assert {e.status for e in evaluations} == {Status.FAILED_SHAPE}
    assert eventually(lambda: sorted(descendants(os.getpid())) == family)
    assert box.server_pid() == server
    assert open_fds() == fds
    assert candidate_dirs(own_tmp) == []
    assert rss_mb(os.getpid()) - rss < 20, "the run process grew"
    assert rss_mb(server) - server_rss < 20, "the fork server grew"
    assert elapsed < 100 * 0.5 * 2, f"{elapsed:.1f} s for 100 candidates"


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
