"""Hostile candidates that go after processes, signals and resources: each ends as a
failed candidate with a specific status, leaves no process behind, and changes nothing
outside the sandbox's temporary directory (the two layers and the ``world``: hostile.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest

from hostile import NET, TINY, World, needs, run_hostile, saw
from lemo_nade.engine import confine
from lemo_nade.records import Status
from proctools import alive, eventually, live_candidates, with_cmdline
from sandboxes import job

pytest_plugins = ["sandbox_fixtures"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


# ---- processes ------------------------------------------------------------------------


def test_starting_processes_is_refused(world: World, features: confine.Features) -> None:
    needs(features, seccomp=True)
    code = (
        "import os, subprocess\n"
        "me, seen = os.getpid(), []\n"
        "for start in (lambda: subprocess.Popen(['sleep', '61.5']),\n"
        "              lambda: os.fork(),\n"
        "              lambda: os.posix_spawn('/bin/sleep', ['sleep', '61.5'], {})):\n"
        "    try:\n"
        "        start()\n"
        "        seen.append('started')\n"
        "    except OSError as exc:\n"
        "        seen.append(type(exc).__name__)\n"
        "    if os.getpid() != me:  # a forked child must not go on\n"
        "        os._exit(0)\n"
        "raise RuntimeError(f'SEEN {seen}')\n"
    )
    seen = saw(run_hostile(world, code + NET))
    assert seen.strip() == str(["PermissionError"] * 3)
    assert with_cmdline("sleep 61.5") == []


def test_allowed_processes_die_with_it_even_daemonised(
    world: World, features: confine.Features
) -> None:
    """With ``compile`` on, candidates may start processes (inductor runs a compiler):
    the PID namespace still takes every one of them down with the candidate."""
    needs(features, namespaces=True)  # without a PID namespace setsid escapes the kill
    code = (
        "import os, subprocess\n"
        "subprocess.Popen(['sleep', '61.5'])\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execvp('sleep', ['sleep', '61.75'])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "raise RuntimeError('SEEN spawned')\n"
    )
    compiled = replace(job(code + NET), compile=True)
    evaluation = world.box.evaluate(compiled, 30, check_policy=False)
    world.assert_untouched()
    assert "spawned" in saw(evaluation)
    assert eventually(lambda: with_cmdline("sleep 61.5") == [])
    assert eventually(lambda: with_cmdline("sleep 61.75") == [])


def test_fork_bomb_is_capped_and_cleaned_up(world: World, features: confine.Features) -> None:
    limit = confine.TASKS_PER_CPU * (os.cpu_count() or 1) + confine.EXTRA_TASKS
    if features.seccomp:
        bound = 3  # no fork succeeds: the candidate, its init and the process outside
    elif features.namespaces and (os.getuid() != 0 or features.run_as is not None):
        bound = limit + 3  # RLIMIT_NPROC, counted in the sandbox's own user namespace
    else:
        pytest.skip("neither seccomp nor a per-sandbox task limit here")
    counts: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            counts.append(len(live_candidates()))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        code = (
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
        )
        evaluation = run_hostile(world, code + NET, timeout_s=3)
    finally:
        done.set()
        watcher.join()
    assert evaluation.status is Status.TIMEOUT
    assert 0 < max(counts) <= bound


THREAD_BOMB = (
    "import threading, time\n"
    "threads = []\n"
    "while True:\n"
    "    t = threading.Thread(target=time.sleep, args=(60,), daemon=True)\n"
    "    t.start()\n"
    "    threads.append(t)\n"
)


def test_thread_bomb_is_bounded_by_the_memory_limit(world: World) -> None:
    evaluation = run_hostile(world, THREAD_BOMB + NET, memory_limit_mb=2000)
    assert evaluation.status is Status.FAILED_BUILD
    assert "can't start new thread" in evaluation.error


def test_thread_bomb_hits_the_task_limit(world: World, features: confine.Features) -> None:
    needs(features, namespaces=True)
    if os.getuid() == 0 and features.run_as is None:
        pytest.skip("uid 0 is exempt from RLIMIT_NPROC, and uid 65534 cannot read the install")
    evaluation = run_hostile(world, THREAD_BOMB + NET)
    assert evaluation.status is Status.FAILED_BUILD
    assert "can't start new thread" in evaluation.error


def test_killing_other_processes_fails(world: World, features: confine.Features) -> None:
    if not (features.namespaces or features.landlock_abi >= 6):
        pytest.skip("needs a PID namespace or Landlock ABI 6+ (signal scoping)")
    victim = subprocess.Popen(["sleep", "30"])
    server = world.box.server_pid()
    try:
        code = (
            "import os, signal\n"
            "seen = []\n"
            f"for pid in ({victim.pid}, os.getppid(), {server or 0}, {os.getpid()}):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "        seen.append('sent')\n"
            "    except OSError as exc:\n"
            "        seen.append(type(exc).__name__)\n"
            "if os.getpid() == 2 and os.getppid() == 1:  # only inside a PID namespace\n"
            "    try:\n"
            "        os.kill(-1, signal.SIGKILL)  # every process it can see\n"
            "    except OSError as exc:\n"
            "        seen.append(type(exc).__name__)\n"
            "raise RuntimeError(f'SEEN {seen}')\n"
        )
        saw(run_hostile(world, code + NET))
        assert victim.poll() is None and alive(victim.pid)
        assert server is None or (alive(server) and world.box.server_pid() == server)
    finally:
        victim.kill()
        victim.wait()


def test_ignoring_signals_does_not_stop_the_timeout(world: World) -> None:
    code = (
        "import signal, time\n"
        "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])\n"
        "while True:\n"
        "    time.sleep(0.1)\n"
    )
    start = time.monotonic()
    evaluation = run_hostile(world, code + NET, timeout_s=2)
    assert evaluation.status is Status.TIMEOUT and time.monotonic() - start < 6


def test_ptrace_is_refused(world: World, features: confine.Features) -> None:
    needs(features, seccomp=True)
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "rc = libc.ptrace(16, os.getppid(), 0, 0)  # PTRACE_ATTACH\n"
        "raise RuntimeError(f'SEEN rc={rc} errno={ctypes.get_errno()}')\n"
    )
    assert saw(run_hostile(world, code + NET)).strip() == "rc=-1 errno=1"


def test_it_sees_only_its_own_namespace(world: World, features: confine.Features) -> None:
    needs(features, namespaces=True)
    code = "import os\nraise RuntimeError(f'SEEN pid={os.getpid()} ppid={os.getppid()}')\n"
    assert saw(run_hostile(world, code + NET)).strip() == "pid=2 ppid=1"


# ---- resources ------------------------------------------------------------------------

MEMORY_BOMBS = {
    "one huge block": "x = bytearray(64 * 2**30)",
    "growing list": "blocks = []\nwhile True:\n    blocks.append(bytearray(100 * 2**20))",
    "huge tensor": "import torch\nx = torch.ones(2**31)",
}


@pytest.mark.parametrize("bomb", MEMORY_BOMBS.values(), ids=MEMORY_BOMBS.keys())
def test_memory_bomb_is_oom(bomb: str, world: World) -> None:
    code = bomb.replace("\n", "\n        ")
    net = f"import torch\nclass Net:\n    def __init__(self):\n        {code}\n"
    evaluation = run_hostile(world, net, policy=True, memory_limit_mb=2000)
    assert evaluation.status is Status.OOM, evaluation.error


@pytest.mark.parametrize("where", ["__init__", "forward"])
def test_endless_loop_times_out(where: str, world: World) -> None:
    code = TINY.replace(
        "return self.head" if where == "forward" else "self.head = nn.Linear(64, 10)",
        "while True:\n            pass\n        "
        + ("return self.head" if where == "forward" else "self.head = nn.Linear(64, 10)"),
    )
    evaluation = run_hostile(world, code, policy=True, timeout_s=2)
    assert evaluation.status is Status.TIMEOUT


def test_huge_output_is_cut_at_the_file_size_limit(world: World) -> None:
    code = "import torch\nfor _ in range(400):\n    print('x' * 2**20)\n" + NET
    evaluation = run_hostile(world, code, policy=True)
    assert evaluation.status is Status.FAILED_BUILD
    assert "File too large" in evaluation.error
    assert len(evaluation.log_tail.encode()) <= 64_000
