"""Run one candidate in a sandboxed child and turn whatever happens into an Evaluation.

Main-process side: no torch import. :func:`evaluate` never raises for anything a
candidate does: a policy rejection, a crash, a hang or a garbled result all come back
as an :class:`~lemo_nade.records.Evaluation` with a status, the error text and the
tail of the child's output. Template: karpathy/nanochat's ``execution.py``.

How a candidate runs:

- static policy first (:mod:`lemo_nade.policy`); a rejected candidate starts no process;
- a new temporary directory per candidate (cwd, HOME and TMPDIR; removed after; one
  left behind by a run that was SIGKILLed is removed by the next run's first candidate);
- a fork server (:mod:`lemo_nade.engine.forkserver`, Linux): one long-lived process that
  imported torch once forks a clean child per candidate, so a candidate does not pay
  for a fresh ``import torch``. It starts with the scrubbed environment below, in its
  own session, and dies with the run process (``PR_SET_PDEATHSIG``), as does every
  child it forks. If it cannot start, or with ``fresh_process=True``, or off Linux, or
  with ``LEMO_NADE_FORKSERVER=0``, each candidate gets a fresh
  ``python -m lemo_nade.engine.worker`` instead (same limits, about a second slower);
- a scrubbed environment: only :data:`KEPT_ENV_VARS` pass, so API keys and tokens in
  the parent's environment are not visible to the candidate;
- rlimits: address space (``memory_limit_mb``, when given), CPU seconds (a backstop
  behind the wall clock), file size, open files, processes, no core dumps;
- kernel isolation where Linux allows it without privileges (:mod:`lemo_nade.confine`):
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
  :data:`GRACE_S` after the limit, the server itself is killed (and with it the child);
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

import atexit
import contextlib
import ctypes
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from lemo_nade import confine, policy
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
FILE_SIZE_LIMIT_BYTES = confine.FILE_SIZE_LIMIT_BYTES
OPEN_FILES_LIMIT = confine.OPEN_FILES_LIMIT
RESULT_SIZE_LIMIT_BYTES = 1 * 2**20
POLL_INTERVAL_S = 0.02
GRACE_S = 10.0  # the run process's backstop beyond the fork server's own wall clock
CPU_GRACE_S = 10  # RLIMIT_CPU = timeout x CPUs + this (the wall clock comes first)
SERVER_START_TIMEOUT_S = 180.0  # importing torch on a loaded machine
SERVER_START_ATTEMPTS = 3  # then every candidate gets a fresh interpreter
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
WORKDIR_PREFIX = "lemo-nade-"  # then the run process's pid and a dash
_WORKDIR_NAME = re.compile(r"lemo-nade-(\d+)-\w+")
_SWEPT: set[tuple[int, str]] = set()
WORKER_MODULE = "lemo_nade.engine.worker"
SERVER_MODULE = "lemo_nade.engine.forkserver"
# Keeps numpy's OpenBLAS from starting threads at import: the server and the fresh
# worker must be single-threaded to fork safely and to enter namespaces.
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1"}
PR_SET_PDEATHSIG = 1  # linux/prctl.h
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
        features = _SERVER.features_or_none()
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
    _SERVER.stop()


def server_pid() -> int | None:
    """The fork server's pid while one runs in this process."""
    return _SERVER.pid()


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


def child_env(parent: Mapping[str, str], workdir: str) -> dict[str, str]:
    """The child's whole environment: allow-listed variables, HOME and TMPDIR in ``workdir``."""
    env = {name: parent[name] for name in KEPT_ENV_VARS if name in parent}
    env.setdefault("PATH", os.defpath)
    env["HOME"] = workdir
    env["TMPDIR"] = workdir
    return env


@dataclass(frozen=True)
class _Outcome:
    returncode: int
    timed_out: bool
    problem: str = ""  # the sandbox itself failed (e.g. the fork server died)


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
            outcome = _SERVER.run(request, timeout_s)
        if outcome is None:
            outcome = _run_fresh(workdir, request, log, timeout_s, memory_limit_mb)
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
        env=tuple(sorted(child_env(os.environ, str(workdir)).items())),
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


# ---- the fresh-interpreter path --------------------------------------------------------


def _run_fresh(
    workdir: Path,
    request: dict[str, Any],
    log: BinaryIO,
    timeout_s: float,
    memory_limit_mb: int | None,
) -> _Outcome:
    request_file = workdir / "request.json"
    request_file.write_text(json.dumps(request))
    command = [sys.executable, "-m", WORKER_MODULE, str(request_file), request["result"]]
    proc = subprocess.Popen(
        command,
        cwd=workdir,
        env={**child_env(os.environ, str(workdir)), **SINGLE_THREAD_ENV},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_limits(memory_limit_mb),
    )
    timed_out = _wait_then_kill_group(proc, timeout_s)
    return _Outcome(proc.returncode, timed_out)


# ---- the fork server, seen from the run process ---------------------------------------


class _ServerError(Exception):
    pass


class _ForkServer:
    """The run process's handle on one fork server: started lazily, one candidate at a time.

    A call from a second thread while a candidate runs gets ``None`` (and so a fresh
    interpreter). After a ``fork`` of the run process the child starts its own server.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0
        self._err: BinaryIO | None = None  # the server's stderr: an unlinked temp file
        self._buffer = b""
        self._features: confine.Features | None = None
        self._failed_starts = 0
        self._registered = False

    def pid(self) -> int | None:
        proc = self._proc
        if proc is None or self._owner != os.getpid() or proc.poll() is not None:
            return None
        return proc.pid

    def features_or_none(self) -> confine.Features | None:
        with self._lock:
            return self._features if self._ensure() else None

    def run(self, request: dict[str, Any], timeout_s: float) -> _Outcome | None:
        """The child's outcome, or None when the server cannot be used for it."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if not self._ensure():
                return None
            return self._request(request, timeout_s)
        finally:
            self._lock.release()

    def stop(self) -> None:
        with self._lock:
            proc = self._proc
            if proc is not None and self._owner == os.getpid():
                with contextlib.suppress(OSError):
                    if proc.stdin is not None:
                        proc.stdin.close()  # end of input: the server exits
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            self._kill()

    def _ensure(self) -> bool:
        if self._proc is not None and self._owner == os.getpid() and self._proc.poll() is None:
            return True
        if self._owner != os.getpid():  # inherited through fork: not ours to stop
            self._proc, self._err, self._buffer = None, None, b""
        self._kill()
        if self._failed_starts >= SERVER_START_ATTEMPTS:
            return False
        try:
            self._start()
        except (OSError, subprocess.SubprocessError, _ServerError, ValueError) as exc:
            self._failed_starts += 1
            self._kill()
            if self._failed_starts >= SERVER_START_ATTEMPTS:
                print(
                    f"lemo-nade: the sandbox fork server failed to start ({exc}); "
                    "each candidate now starts a fresh interpreter",
                    file=sys.stderr,
                )
            return False
        self._failed_starts = 0
        return True

    def _start(self) -> None:
        # No directory of its own, so nothing is left behind even if this process is
        # SIGKILLed: cwd "/" (no user-writable directory first on its sys.path), its
        # stderr in an unlinked file, HOME/TMPDIR unused (each child gets its own).
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 (open as long as the server)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE],
            cwd="/",
            env={**child_env(os.environ, tempfile.gettempdir()), **SINGLE_THREAD_ENV},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            bufsize=0,
            start_new_session=True,
            preexec_fn=_limits(None),
        )
        self._owner = os.getpid()
        self._buffer = b""
        hello = self._read_message(time.monotonic() + SERVER_START_TIMEOUT_S)
        if not hello or not hello.get("ready"):
            raise _ServerError(f"no greeting; {self._log_tail()}")
        self._features = confine.Features.from_dict(hello.get("features", {}))
        if not self._registered:
            atexit.register(shutdown)
            self._registered = True

    def _request(self, request: dict[str, Any], timeout_s: float) -> _Outcome | None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        data = (json.dumps(request) + "\n").encode()
        try:
            while data:
                data = data[os.write(proc.stdin.fileno(), data) :]
        except OSError:  # it died since the check: this candidate gets a fresh interpreter
            self._kill()
            return None
        deadline = time.monotonic() + timeout_s + GRACE_S
        try:
            reply = self._read_message(deadline)
        except ValueError as exc:  # not JSON: the server is broken; start a new one next time
            self._kill()
            return _Outcome(1, False, f"the fork server sent an unreadable reply ({exc})")
        except BaseException:  # e.g. Ctrl-C: the server and so the child must not outlive it
            self._kill()
            raise
        if reply is None:
            timed_out = time.monotonic() >= deadline
            problem = f"the fork server died while running the candidate; {self._log_tail()}"
            self._kill()
            return _Outcome(-signal.SIGKILL, timed_out, "" if timed_out else problem)
        if "error" in reply:
            return _Outcome(1, False, str(reply["error"]))
        return _Outcome(int(reply["returncode"]), bool(reply["timed_out"]))

    def _read_message(self, deadline: float) -> dict[str, Any] | None:
        """The next line from the server as JSON; None at end of output or the deadline."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        return message if isinstance(message, dict) else None

    def _log_tail(self) -> str:
        if self._err is None:
            return "no server log"
        try:
            self._err.seek(0)
            text = self._err.read().decode(errors="replace")
        except (OSError, ValueError):
            return "no server log"
        tail = "\n".join(text.rstrip().splitlines()[-ERROR_TAIL_LINES:])[-ERROR_TAIL_CHARS:]
        return f"server log: {tail}" if tail else "the server log is empty"

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and self._owner == os.getpid():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if self._err is not None and self._owner == os.getpid():
            self._err.close()
        self._proc, self._err, self._buffer = None, None, b""


_SERVER = _ForkServer()


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
