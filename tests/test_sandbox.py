"""The sandbox end to end: real child processes, real rlimits, real timeouts.

Each child imports torch (about a second), so these tests use tiny jobs.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from lemo_nade import sandbox
from lemo_nade.records import EvalJob, Status

SMALL_CNN = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.head(x.flatten(1))
"""
NET = "\nclass Net:\n    def __init__(self):\n        raise ValueError('stop here')\n"


def _job(code: str, epochs: int = 1, **kw: Any) -> EvalJob:
    return EvalJob(code=code, dataset="digits", data_dir=None, epochs=epochs, batch_size=64, **kw)


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sandbox temp dirs go here, so a test can see they were removed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
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


def _process_gone(pid: int) -> bool:
    """Dead or a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_good_model_is_ok_with_sane_metrics(
    own_tmp: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    evaluation = sandbox.evaluate(_job(SMALL_CNN, epochs=3), timeout_s=120)
    assert evaluation.status is Status.OK, evaluation.error + evaluation.log_tail
    m = evaluation.metrics
    assert m is not None
    assert m.A2 > 0.5 and m.P == (8 * 9 + 8) + (128 * 10 + 10)
    assert m.F > 0 and m.E1 > 0 and m.energy_source == "estimate"
    assert "epoch 3/3" in evaluation.log_tail
    assert evaluation.wall_time_s > m.train_time_s > 0
    assert len(children) == 1 and children[0].returncode == 0
    assert list(own_tmp.iterdir()) == []  # the temporary directory was removed


@pytest.mark.parametrize(
    ("code", "status", "start"),
    [
        ("class Net(:\n    pass\n", Status.FAILED_SYNTAX, "syntax: line 1"),
        ("import os" + NET, Status.FAILED_POLICY, "import: line 1: import of 'os'"),
    ],
)
def test_rejected_code_starts_no_child(
    code: str, status: Status, start: str, children: list[subprocess.Popen[bytes]]
) -> None:
    evaluation = sandbox.evaluate(_job(code), timeout_s=30)
    assert evaluation.status is status and evaluation.error.startswith(start)
    assert children == []


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


def test_build_failure_comes_back_with_the_candidate_traceback() -> None:
    evaluation = sandbox.evaluate(_job("import torch" + NET), timeout_s=60)
    assert evaluation.status is Status.FAILED_BUILD
    assert 'File "candidate.py", line 4, in __init__' in evaluation.error
    assert evaluation.error.endswith("ValueError: stop here")


def test_endless_loop_times_out_and_its_group_is_killed(
    children: list[subprocess.Popen[bytes]],
) -> None:
    code = "class Net:\n    def __init__(self):\n        while True:\n            pass\n"
    start = time.monotonic()
    evaluation = sandbox.evaluate(_job(code), timeout_s=3)
    elapsed = time.monotonic() - start
    assert evaluation.status is Status.TIMEOUT and "longer than 3 s" in evaluation.error
    assert 3 <= elapsed < 6
    assert len(children) == 1 and _group_gone(children[0].pid)


def test_timeout_kills_grandchildren_too() -> None:
    code = (
        "import subprocess\n"
        "sleeper = subprocess.Popen(['sleep', '60'])\n"
        "print('GRANDCHILD', sleeper.pid, flush=True)\n"
        "while True:\n    pass\n"
    )
    evaluation = sandbox.run_child(_job(code + NET), timeout_s=3)
    assert evaluation.status is Status.TIMEOUT
    match = re.search(r"GRANDCHILD (\d+)", evaluation.log_tail)
    assert match is not None, evaluation.log_tail
    deadline = time.monotonic() + 2
    while not _process_gone(int(match.group(1))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _process_gone(int(match.group(1)))


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
    assert sandbox.child_env(parent, "/w") == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "HOME": "/w",
        "TMPDIR": "/w",
    }


def test_child_runs_scrubbed_in_its_own_temp_dir_and_log_is_capped(
    own_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    code = (
        "import os\n"
        "print('x' * 200_000)\n"
        "print('ENV', ' '.join(sorted(os.environ)))\n"
        "print('CWD', os.getcwd(), 'HOME', os.environ['HOME'], 'TMP', os.environ['TMPDIR'])\n"
    )
    evaluation = sandbox.run_child(_job(code + NET), timeout_s=60, log_cap_bytes=4000)
    assert evaluation.status is Status.FAILED_BUILD
    tail = evaluation.log_tail
    assert len(tail.encode()) <= 4000 and tail.startswith("xxx")  # the head was cut
    assert "ValueError: stop here" in evaluation.error
    assert "sk-must-not-leak" not in tail and "OPENAI_API_KEY" not in tail
    env_line = re.search(r"^ENV (.*)$", tail, re.MULTILINE)
    assert env_line is not None
    allowed = {*sandbox.KEPT_ENV_VARS, "HOME", "TMPDIR", "LC_CTYPE"}  # LC_CTYPE: PEP 538
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
            "import os, sys\nopen(sys.argv[2], 'w').write('{not json')\nos._exit(0)\n",
            Status.CRASHED,
            "unreadable result",
        ),
        (
            "import os, sys\nos.mkfifo(sys.argv[2])\nos._exit(0)\n",
            Status.CRASHED,
            "wrote no result",
        ),
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


def test_memory_limit_turns_a_huge_allocation_into_oom() -> None:
    code = "import torch" + NET.replace(
        "raise ValueError('stop here')", "torch.zeros(4_000_000_000)"
    )
    evaluation = sandbox.evaluate(_job(code, threads=1), timeout_s=60, memory_limit_mb=3000)
    assert evaluation.status is Status.OOM, evaluation.error
    assert "can't allocate memory" in evaluation.error


def test_interrupt_while_waiting_still_kills_the_child(
    children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sandbox.time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sandbox.evaluate(_job(SMALL_CNN, epochs=50), timeout_s=60)
    assert len(children) == 1 and children[0].returncode is not None
    assert _group_gone(children[0].pid)
