"""Run one candidate in a child process and turn whatever happens into an Evaluation.

Main-process side: no torch import. :func:`evaluate` never raises for anything a
candidate does: a policy rejection, a crash, a hang or a garbled result all come back
as an :class:`~lemo_nade.records.Evaluation` with a status, the error text and the
tail of the child's output. Template: karpathy/nanochat's ``execution.py``.

What it does:

- static policy first (:mod:`lemo_nade.policy`); a rejected candidate starts no process;
- a fresh ``python -m lemo_nade.engine.worker`` per candidate, in its own session and
  process group, with a new temporary directory as cwd, HOME and TMPDIR (removed after);
- a scrubbed environment: only :data:`KEPT_ENV_VARS` pass, so API keys and tokens in
  the parent's environment are not visible to the candidate;
- on Linux, ``PR_SET_PDEATHSIG``: the child is killed when the run process dies, even
  by SIGKILL, so a crashed run leaves no orphan training in the background;
- rlimits: address space (``memory_limit_mb``, when given), file size
  (:data:`FILE_SIZE_LIMIT_BYTES`), open files, no core dumps;
- a wall-clock limit: on expiry the whole process group gets SIGKILL (``TIMEOUT``);
  the group is killed after a normal exit too, so stray grandchildren do not linger;
- stdout/stderr go to a file; only its last ``log_cap_bytes`` are read back;
- the result file is opened without following links and must be a small regular file.

What it does NOT protect against (this is not a security boundary for hostile code):

- network access: there is no network namespace; a candidate that gets past the policy
  can open sockets;
- the file system: no chroot, namespaces, Landlock or seccomp. With a policy bypass a
  candidate can read any file the user can read and write any file the user can write;
  the size limit is per file, so many files can still fill a disk;
- escape from the process group: code that calls ``setsid`` or double-forks into a new
  session survives the kill; there is no process-count limit (RLIMIT_NPROC is per
  user, so it would throttle the user's other work), so a fork bomb is not stopped;
- forged metrics: the child writes its own result, so code running inside it can
  write any numbers it likes;
- GPU memory and time-sharing: rlimits do not cover the GPU, and RLIMIT_AS limits
  virtual address space, not resident memory. torch reserves a lot of address space
  (and CUDA far more), so use a generous ``memory_limit_mb`` and none on a GPU;
- ``preexec_fn`` is documented as unsafe when the calling process has threads (a
  rare deadlock between fork and exec).

For hostile code, run the whole tool in a disposable container or VM without network
(e.g. ``docker run --network none``, gVisor, bubblewrap). POSIX only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from lemo_nade import policy
from lemo_nade.records import EvalJob, Evaluation, Status

KEPT_ENV_VARS = (
    "PATH",
    "LANG",
    "LC_ALL",
    "PYTHONPATH",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",  # which GPU a child may use (set per worker by e.g. Ray)
)
FILE_SIZE_LIMIT_BYTES = 256 * 2**20
OPEN_FILES_LIMIT = 1024
RESULT_SIZE_LIMIT_BYTES = 1 * 2**20
POLL_INTERVAL_S = 0.02
ERROR_TAIL_LINES = 15  # of the log, in the error text of a crash
ERROR_TAIL_CHARS = 2000
# Texts that mean out of memory: Python, torch (CPU and CUDA), C++, the dynamic loader.
OOM_MARKERS = (
    "memoryerror",
    "out of memory",
    "cannot allocate memory",
    "can't allocate memory",
    "std::bad_alloc",
    "failed to map segment",
)
WORKER_MODULE = "lemo_nade.engine.worker"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def evaluate(
    job: EvalJob,
    timeout_s: float,
    memory_limit_mb: int | None = None,
    log_cap_bytes: int = 64_000,
) -> Evaluation:
    """Policy-check ``job.code``, then build, train and measure it in a sandboxed child."""
    verdict = policy.check(job.code)
    if verdict is not None:
        status, message = verdict
        return Evaluation(status, error=message)
    return run_child(job, timeout_s, memory_limit_mb, log_cap_bytes)


def run_child(
    job: EvalJob,
    timeout_s: float,
    memory_limit_mb: int | None = None,
    log_cap_bytes: int = 64_000,
) -> Evaluation:
    """:func:`evaluate` without the policy check: for tests and trusted code."""
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="lemo-nade-", ignore_cleanup_errors=True) as tmp:
            evaluation = _run_in(Path(tmp), job, timeout_s, memory_limit_mb, log_cap_bytes)
    except (OSError, subprocess.SubprocessError) as exc:  # e.g. the rlimits could not be set
        evaluation = Evaluation(Status.CRASHED, error=f"sandbox: could not run the child: {exc}")
    return replace(evaluation, wall_time_s=time.perf_counter() - start)


def child_env(parent: Mapping[str, str], workdir: str) -> dict[str, str]:
    """The child's whole environment: allow-listed variables, HOME and TMPDIR in ``workdir``."""
    env = {name: parent[name] for name in KEPT_ENV_VARS if name in parent}
    env.setdefault("PATH", os.defpath)
    env["HOME"] = workdir
    env["TMPDIR"] = workdir
    return env


def _run_in(
    workdir: Path, job: EvalJob, timeout_s: float, memory_limit_mb: int | None, log_cap_bytes: int
) -> Evaluation:
    request, result = workdir / "request.json", workdir / "result.json"
    request.write_text(json.dumps(job.to_dict()))
    command = [sys.executable, "-m", WORKER_MODULE, str(request), str(result)]
    # The parent keeps its own handle on the log: whatever the child does to the
    # directory entry, the tail is read from the file it actually wrote.
    with (workdir / "child.log").open("w+b") as log:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=child_env(os.environ, str(workdir)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_limits(memory_limit_mb),
        )
        timed_out = _wait_then_kill_group(proc, timeout_s)
        tail = _read_tail(log, log_cap_bytes)
    if timed_out:
        return Evaluation(
            Status.TIMEOUT,
            error=f"timeout: the candidate ran longer than {timeout_s:g} s (wall clock) "
            "and was killed; make it smaller or faster",
            log_tail=tail,
        )
    return _classify(proc.returncode, _read_result(result), tail)


def _limits(memory_limit_mb: int | None) -> Callable[[], None]:
    """The ``preexec_fn``: only setrlimit calls on values computed here, before the fork."""
    limits = [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT_BYTES),
        (resource.RLIMIT_NOFILE, OPEN_FILES_LIMIT),
    ]
    if memory_limit_mb is not None:
        limits.append((resource.RLIMIT_AS, memory_limit_mb * 2**20))

    prctl = _prctl()

    def apply() -> None:
        if prctl is not None:  # die with the run process, even when it is SIGKILLed
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        for kind, value in limits:
            _, hard = resource.getrlimit(kind)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(kind, (value, value))  # hard too: the child cannot raise it

    return apply


def _prctl() -> Callable[[int, int], int] | None:
    """Linux's ``prctl``, looked up before the fork (no imports or loading in the child)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return func


def _wait_then_kill_group(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for the child; True when it hit the wall-clock limit.

    The group is killed and the child reaped however the wait ends (exit, timeout,
    Ctrl-C in this process). Waiting does not reap (``WNOWAIT``) where the OS allows,
    so the group id cannot be reused by an unrelated process before the kill.
    """
    try:
        deadline = time.monotonic() + timeout_s
        while not _has_exited(proc):
            if time.monotonic() >= deadline:
                return True
            time.sleep(POLL_INTERVAL_S)
        return False
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    if hasattr(os, "waitid"):
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        try:
            return os.waitid(os.P_PID, proc.pid, flags) is not None
        except ChildProcessError:  # already reaped (e.g. SIGCHLD ignored in this process)
            return True
    return proc.poll() is not None  # reaps: a tiny window for group-id reuse


def _read_tail(log: BinaryIO, cap_bytes: int) -> str:
    size = os.fstat(log.fileno()).st_size
    log.seek(max(0, size - max(0, cap_bytes)))
    return log.read(max(0, cap_bytes)).decode("utf-8", errors="replace")


def _read_result(path: Path) -> str | None:
    """The result file's text, or None when missing, not a regular file, or too large."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > RESULT_SIZE_LIMIT_BYTES:
            return None
        return f.read(RESULT_SIZE_LIMIT_BYTES).decode("utf-8", errors="replace")


def _classify(returncode: int, result_text: str | None, tail: str) -> Evaluation:
    if result_text is not None:
        try:
            return replace(Evaluation.from_dict(json.loads(result_text)), log_tail=tail)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            problem = f"wrote an unreadable result ({type(exc).__name__}: {exc})"
    else:
        problem = "wrote no result"
    last_lines = "\n".join(tail.rstrip().splitlines()[-ERROR_TAIL_LINES:])[-ERROR_TAIL_CHARS:]
    if looks_like_oom(tail):
        hint = " (if every candidate ends so, memory_limit_mb is too small for torch itself)"
        return Evaluation(
            Status.OOM,
            error=f"out of memory: the child {problem}{hint}\n{last_lines}",
            log_tail=tail,
        )
    return Evaluation(
        Status.CRASHED,
        error=f"crashed: the child {_describe_exit(returncode)} and {problem}\n{last_lines}",
        log_tail=tail,
    )


def looks_like_oom(text: str) -> bool:
    """Whether an error text or log says memory ran out (shared with the worker)."""
    lowered = text.lower()
    return any(marker in lowered for marker in OOM_MARKERS)


def _describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hints = {
        "SIGKILL": " (possibly the kernel's OOM killer)",
        "SIGXFSZ": f" (a file exceeded {FILE_SIZE_LIMIT_BYTES // 2**20} MB)",
        "SIGSEGV": " (a crash in native code)",
    }
    return f"was killed by {name}{hints.get(name, '')}"
