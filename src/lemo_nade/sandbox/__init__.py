"""Run one candidate in a sandboxed child and turn whatever happens into an Evaluation.

Main-process side: no torch import. :func:`evaluate` never raises for anything a
candidate does: a policy rejection, a crash, a hang or a garbled result all come back
as an :class:`~lemo_nade.records.Evaluation` with a status, the error text and the
tail of the child's output. Template: karpathy/nanochat's ``execution.py``.

How a candidate runs:

- static policy first (:mod:`lemo_nade.sandbox.policy`); a rejected candidate starts no process;
- a new temporary directory per candidate (cwd, HOME and TMPDIR; removed after; one
  left behind by a run that was SIGKILLed is removed by the next run's first candidate);
- a fork server (:mod:`lemo_nade.engine.forkserver`, Linux): one long-lived process that
  imported torch once forks a clean child per candidate, so a candidate does not pay
  for a fresh ``import torch``. It starts with the scrubbed environment below, in its
  own session, and dies with the run process (``PR_SET_PDEATHSIG``), as does every
  child it forks. If it cannot start, or with ``fresh_process=True``, or off Linux, or
  with ``LEMO_NADE_FORKSERVER=0``, each candidate gets a fresh
  ``python -m lemo_nade.engine.worker`` instead (same limits, about a second slower);
- a scrubbed environment: only :data:`lemo_nade.sandbox.launch.KEPT_ENV_VARS` pass, so API keys
  and tokens in the parent's environment are not visible to the candidate;
- rlimits: address space (``memory_limit_mb``, when given), CPU seconds (a backstop
  behind the wall clock), file size, open files, processes, no core dumps;
- kernel isolation where Linux allows it without privileges (:mod:`lemo_nade.engine.confine`):
  user, PID and network namespaces (no network; every process the candidate starts
  dies with it; a task limit of its own), Landlock (reads only the Python installation,
  system libraries, the package and the dataset; writes only its temporary directory;
  no TCP; no signals out), seccomp (no ``socket``, ``ptrace``, io_uring, ``chmod``/
  ``chown``/``utimes``/xattrs, and no new processes unless ``compile`` is on), no
  capabilities, ``no_new_privs``; started as root, candidates run as uid 65534 where
  that uid can read the Python installation. :func:`isolation` says what this machine
  offers; ``LEMO_NADE_CONFINE=0`` turns this layer off (e.g. to debug a GPU driver that
  needs more files);
- a wall-clock limit: on expiry the child's whole process group gets SIGKILL
  (``TIMEOUT``); the group is killed after a normal exit too, so stray processes do
  not linger. The run process keeps a backstop: if the fork server does not answer
  :data:`lemo_nade.sandbox.launch.GRACE_S` after the limit, the server itself is killed (and
  with it the child);
- stdout/stderr go to a file; only its last ``log_cap_bytes`` are read back;
- the result file is opened without following links and must be a small regular file.

What is and is not covered, per platform:

- Linux with unprivileged user namespaces, Landlock and seccomp (e.g. this project's
  development VM: kernel 6.18, Landlock ABI 7, x86_64): all of the above; the hostile
  suite (tests/test_hostile.py) runs there. Not covered: a candidate can read what the
  read-only list holds (the Python installation, ``/usr``, the dataset, the package
  sources) and burn CPU until the wall clock; it can fill the disk beneath its
  temporary directory (256 MB per file, 1024 open files, no total quota: Linux has no
  unprivileged disk quota); memory is bounded by ``RLIMIT_AS`` only when
  ``memory_limit_mb`` is set (virtual memory: be generous, and set none on a GPU),
  otherwise by the OOM killer, which takes the candidate first; the GPU is not limited
  at all. Run as root where uid 65534 cannot read the Python installation (e.g. pyenv
  under ``/root``), candidates stay uid 0 and the kernel exempts uid 0 from
  ``RLIMIT_NPROC``: a thread bomb is then bounded by ``memory_limit_mb`` and the wall
  clock only (forks are still refused). The child writes its own result, so code that
  got past the policy can forge its metrics.
- Linux without unprivileged user namespaces (``kernel.unprivileged_userns_clone=0``;
  Ubuntu 24.04's AppArmor default restricts them too): no PID or network namespace.
  seccomp still refuses ``socket`` (no network) and new processes, and Landlock still
  confines files, but with ``compile`` on a process that calls ``setsid`` escapes the
  group kill, and ``RLIMIT_NPROC`` counts all of the user's processes (set to the
  system's task count plus a margin). Without Landlock (older kernels, or not in the
  LSM list) a candidate that gets past the policy can read and write whatever the user
  can; without seccomp (other CPU architectures) it can open sockets where there is no
  network namespace.
- macOS: no fork server and no kernel isolation; only the policy, the scrubbed
  environment, the temporary directory, rlimits and the wall clock. Treat generated
  code as untrusted there: run the tool in a disposable VM or container without
  network (e.g. ``docker run --network none``). Windows is not supported (POSIX only).

The policy is a first filter for mistakes and obvious attempts, not the boundary;
the kernel layer is the boundary, and only where :func:`isolation` reports it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from lemo_nade.engine import confine
from lemo_nade.records import EvalJob, Evaluation, Status
from lemo_nade.sandbox import launch, policy

FILE_SIZE_LIMIT_BYTES = confine.FILE_SIZE_LIMIT_BYTES
RESULT_SIZE_LIMIT_BYTES = 1 * 2**20
CPU_GRACE_S = 10  # RLIMIT_CPU = timeout x CPUs + this (the wall clock comes first)
# Texts that mean out of memory: Python, torch (CPU and CUDA), C++, the dynamic loader.
OOM_MARKERS = (
    "memoryerror",
    "out of memory",
    "cannot allocate memory",
    "can't allocate memory",
    "std::bad_alloc",
    "failed to map segment",
)
WORKDIR_PREFIX = "lemo-nade-"  # then the run process's pid and a dash
_WORKDIR_NAME = re.compile(r"lemo-nade-(\d+)-\w+")
_SWEPT: set[tuple[int, str]] = set()
EXIT_HINTS = {
    confine.CONFINE_FAILED: " (the sandbox could not confine it; see the log)",
    71: " (the sandbox could not set up the child)",
}


def evaluate(
    job: EvalJob,
    timeout_s: float,
    memory_limit_mb: int | None = None,
    log_cap_bytes: int = 64_000,
    *,
    fresh_process: bool = False,
    workdir: Path | None = None,
) -> Evaluation:
    """Policy-check ``job.code``, then build, train and measure it in a sandboxed child.

    ``workdir``: a directory to use (and keep) instead of a fresh temporary one; the
    only place the child may write. ``retrain`` keeps its checkpoints there."""
    verdict = policy.check(job.code)
    if verdict is not None:
        status, message = verdict
        return Evaluation(status, error=message)
    return run_child(
        job, timeout_s, memory_limit_mb, log_cap_bytes, fresh_process=fresh_process, workdir=workdir
    )


def run_child(
    job: EvalJob,
    timeout_s: float,
    memory_limit_mb: int | None = None,
    log_cap_bytes: int = 64_000,
    *,
    fresh_process: bool = False,
    workdir: Path | None = None,
) -> Evaluation:
    """:func:`evaluate` without the policy check: for tests and trusted code."""
    start = time.perf_counter()
    _sweep_once()
    try:
        with _workdir(workdir) as where:
            evaluation = _run_in(
                where, job, timeout_s, memory_limit_mb, log_cap_bytes, fresh_process
            )
    except (OSError, subprocess.SubprocessError) as exc:  # e.g. the rlimits could not be set
        evaluation = Evaluation(Status.CRASHED, error=f"sandbox: could not run the child: {exc}")
    return replace(evaluation, wall_time_s=time.perf_counter() - start)


@contextlib.contextmanager
def _workdir(kept: Path | None) -> Iterator[Path]:
    """The child's working directory: ``kept`` (created, never a stale result in it) or a
    fresh temporary one, removed afterwards."""
    if kept is not None:
        kept = kept.resolve()
        kept.mkdir(parents=True, exist_ok=True)
        (kept / "result.json").unlink(missing_ok=True)
        yield kept
        return
    prefix = f"{WORKDIR_PREFIX}{os.getpid()}-"
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as tmp:
        yield Path(tmp)


def isolation() -> confine.Features:
    """The kernel isolation candidates get on this machine (starts the fork server)."""
    if not _confine_enabled():
        return confine.Features(errors=("turned off by LEMO_NADE_CONFINE=0",))
    if _forkserver_allowed():
        features = launch.SERVER.features_or_none()
        if features is not None:
            return features
    probe = (
        "import json; from lemo_nade import confine; print(json.dumps(confine.probe().to_dict()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    try:
        return confine.Features.from_dict(json.loads(done.stdout))
    except ValueError:
        return confine.Features(errors=(f"probe failed: {done.stderr.strip()[-500:]}",))


def shutdown() -> None:
    """Stop the fork server, if one runs (also registered with :mod:`atexit`)."""
    launch.shutdown()


def server_pid() -> int | None:
    """The fork server's pid while one runs in this process."""
    return launch.SERVER.pid()


def sweep_stale_workdirs(tmp: str | None = None) -> list[str]:
    """Remove candidate temp dirs whose run process is gone (it was SIGKILLed mid-candidate,
    so it could not clean up); returns their names. A dir is named after the pid of the
    process that made it, and only dirs of dead pids are touched."""
    root = tmp or tempfile.gettempdir()
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            match = _WORKDIR_NAME.fullmatch(entry.name)
            if match and entry.is_dir(follow_symlinks=False) and not _pid_alive(int(match[1])):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
    return removed


def _sweep_once() -> None:
    key = (os.getpid(), tempfile.gettempdir())
    if key not in _SWEPT:
        _SWEPT.add(key)
        sweep_stale_workdirs()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _run_in(
    workdir: Path,
    job: EvalJob,
    timeout_s: float,
    memory_limit_mb: int | None,
    log_cap_bytes: int,
    fresh_process: bool,
) -> Evaluation:
    result = workdir / "result.json"
    request = {
        "job": job.to_dict(),
        "spec": _spec(workdir, job, timeout_s, memory_limit_mb).to_dict(),
        "confine": _confine_enabled(),
        "result": str(result),
        "log": str(workdir / "child.log"),
        "timeout_s": timeout_s,
    }
    # The parent keeps its own handle on the log: whatever the child does to the
    # directory entry, the tail is read from the file it actually wrote.
    with (workdir / "child.log").open("w+b") as log:
        outcome = None
        if not fresh_process and _forkserver_allowed():
            outcome = launch.SERVER.run(request, timeout_s)
        if outcome is None:
            outcome = launch.run_fresh(workdir, request, log, timeout_s, memory_limit_mb)
        tail = _read_tail(log, log_cap_bytes)
    if outcome.timed_out:
        return Evaluation(
            Status.TIMEOUT,
            error=f"timeout: the candidate ran longer than {timeout_s:g} s (wall clock) "
            "and was killed; make it smaller or faster",
            log_tail=tail,
        )
    if outcome.problem:
        return Evaluation(Status.CRASHED, error=f"crashed: {outcome.problem}", log_tail=tail)
    return _classify(outcome.returncode, _read_result(result), tail)


def _spec(
    workdir: Path, job: EvalJob, timeout_s: float, memory_limit_mb: int | None
) -> confine.Spec:
    cpus = os.cpu_count() or 1
    threads = job.threads or cpus
    read_paths = [job.data_dir] if job.data_dir else []
    if job.dataset.startswith("npz:"):
        read_paths.append(job.dataset[4:])
    return confine.Spec(
        workdir=str(workdir),
        read_paths=tuple(os.path.abspath(p) for p in read_paths),
        memory_limit_mb=memory_limit_mb,
        cpu_time_s=math.ceil(timeout_s * max(threads, cpus)) + CPU_GRACE_S,
        threads=threads,
        env=tuple(sorted(launch.child_env(os.environ, str(workdir)).items())),
        allow_processes=bool(getattr(job, "compile", False)),  # inductor runs a compiler
    )


def _confine_enabled() -> bool:
    return os.environ.get("LEMO_NADE_CONFINE", "1") != "0"


def _forkserver_allowed() -> bool:
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "fork")
        and os.environ.get("LEMO_NADE_FORKSERVER", "1") != "0"
    )


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
    last_lines = launch.last_lines(tail)
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
        return f"exited with code {returncode}{EXIT_HINTS.get(returncode, '')}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hints = {
        "SIGKILL": " (possibly the kernel's OOM killer)",
        "SIGXFSZ": f" (a file exceeded {FILE_SIZE_LIMIT_BYTES // 2**20} MB)",
        "SIGSEGV": " (a crash in native code)",
        "SIGXCPU": " (the CPU-time limit)",
    }
    return f"was killed by {name}{hints.get(name, '')}"
