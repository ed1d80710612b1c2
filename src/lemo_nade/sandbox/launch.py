"""Starting a sandboxed child from the run process: through a fork server, or in a
fresh interpreter. What the child then does to itself is :mod:`lemo_nade.engine.confine`;
what crosses the boundary is :mod:`lemo_nade.engine.protocol`; what a run does with the
outcome is :mod:`lemo_nade.sandbox.outcome`; :mod:`lemo_nade.sandbox` documents the whole.

Both paths give the child the scrubbed environment (:func:`child_env`), its own session,
rlimits set before it runs any Python of its own (:func:`limits`), and
``PR_SET_PDEATHSIG``, so it dies with the run process even when that is SIGKILLed.
Main-process side: no torch import.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lemo_nade.engine import confine
from lemo_nade.engine.protocol import REQUEST_FILE

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
POLL_INTERVAL_S = 0.02
GRACE_S = 10.0  # the run process's backstop beyond the fork server's own wall clock
SERVER_START_TIMEOUT_S = 180.0  # importing torch on a loaded machine
SERVER_START_ATTEMPTS = 3  # then every candidate gets a fresh interpreter
ERROR_TAIL_LINES = 15  # of a log, in an error text
ERROR_TAIL_CHARS = 2000
WORKER_MODULE = "lemo_nade.engine.worker"
SERVER_MODULE = "lemo_nade.engine.forkserver"
# Keeps numpy's OpenBLAS from starting threads at import: the server and the fresh
# worker must be single-threaded to fork safely and to enter namespaces.
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1"}
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def last_lines(text: str) -> str:
    """The end of a log for an error text: its last lines, capped in characters."""
    return "\n".join(text.rstrip().splitlines()[-ERROR_TAIL_LINES:])[-ERROR_TAIL_CHARS:]


def child_env(parent: Mapping[str, str], workdir: str) -> dict[str, str]:
    """The child's whole environment: allow-listed variables, HOME and TMPDIR in ``workdir``."""
    env = {name: parent[name] for name in KEPT_ENV_VARS if name in parent}
    env.setdefault("PATH", os.defpath)
    env["HOME"] = workdir
    env["TMPDIR"] = workdir
    return env


@dataclass(frozen=True)
class Outcome:
    returncode: int
    timed_out: bool
    problem: str = ""  # the sandbox itself failed (e.g. the fork server died)
    # The child's resource use as its parent saw it when reaping it (``wait4``): CPU
    # seconds (user + system, its reaped descendants included) and peak RSS. The
    # candidate cannot write these; E1 and the training time come from them.
    cpu_s: float | None = None
    maxrss_kb: int | None = None


# ---- the fresh-interpreter path --------------------------------------------------------


def run_fresh(
    workdir: Path,
    request: dict[str, Any],
    log: BinaryIO,
    timeout_s: float,
    memory_limit_mb: int | None,
) -> Outcome:
    request_file = workdir / REQUEST_FILE
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
        preexec_fn=limits(memory_limit_mb),
    )
    timed_out, usage = wait_then_kill_group(proc, timeout_s)
    return Outcome(proc.returncode, timed_out, **usage)


# ---- the fork server, seen from the run process ---------------------------------------


class ServerError(Exception):
    pass


class ForkServer:
    """A handle on one fork server: started lazily, one candidate at a time, stopped by
    :meth:`stop` (a :class:`lemo_nade.sandbox.Sandbox` owns one; nothing else keeps it).

    A call from a second thread while a candidate runs gets ``None`` (and so a fresh
    interpreter). After a ``fork`` of the run process the child starts its own server.
    A server whose owner never stops it still ends with the owner: its stdin closes
    (end of input) and ``PR_SET_PDEATHSIG`` kills it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0
        self._err: BinaryIO | None = None  # the server's stderr: an unlinked temp file
        self._buffer = b""
        self._features: confine.Features | None = None
        self._failed_starts = 0

    def pid(self) -> int | None:
        proc = self._proc
        if proc is None or self._owner != os.getpid() or proc.poll() is not None:
            return None
        return proc.pid

    def features_or_none(self) -> confine.Features | None:
        with self._lock:
            return self._features if self._ensure() else None

    def run(self, request: dict[str, Any], timeout_s: float) -> Outcome | None:
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
        except (OSError, subprocess.SubprocessError, ServerError, ValueError) as exc:
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
            preexec_fn=limits(None),
        )
        self._owner = os.getpid()
        self._buffer = b""
        hello = self._read_message(time.monotonic() + SERVER_START_TIMEOUT_S)
        if not hello or not hello.get("ready"):
            raise ServerError(f"no greeting; {self._log_tail()}")
        self._features = confine.Features.from_dict(hello.get("features", {}))

    def _request(self, request: dict[str, Any], timeout_s: float) -> Outcome | None:
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
            return Outcome(1, False, f"the fork server sent an unreadable reply ({exc})")
        except BaseException:  # e.g. Ctrl-C: the server and so the child must not outlive it
            self._kill()
            raise
        if reply is None:
            timed_out = time.monotonic() >= deadline
            problem = f"the fork server died while running the candidate; {self._log_tail()}"
            self._kill()
            return Outcome(-signal.SIGKILL, timed_out, "" if timed_out else problem)
        if "error" in reply:
            return Outcome(1, False, str(reply["error"]))
        return Outcome(
            int(reply["returncode"]),
            bool(reply["timed_out"]),
            cpu_s=_number(reply.get("cpu_s")),
            maxrss_kb=int(reply["maxrss_kb"]) if isinstance(reply.get("maxrss_kb"), int) else None,
        )

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
        tail = last_lines(text)
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


def limits(memory_limit_mb: int | None) -> Callable[[], None]:
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


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def usage_of(rusage: Any) -> dict[str, Any]:
    """``Outcome`` fields from a ``wait4`` rusage."""
    return {"cpu_s": rusage.ru_utime + rusage.ru_stime, "maxrss_kb": int(rusage.ru_maxrss)}


def wait_then_kill_group(
    proc: subprocess.Popen[bytes], timeout_s: float
) -> tuple[bool, dict[str, Any]]:
    """Wait for the child; True when it hit the wall-clock limit, and its resource use.

    The group is killed and the child reaped however the wait ends (exit, timeout,
    Ctrl-C in this process). Waiting does not reap (``WNOWAIT``) where the OS allows,
    so the group id cannot be reused by an unrelated process before the kill.
    """
    timed_out = False
    try:
        deadline = time.monotonic() + timeout_s
        while not _has_exited(proc):
            if time.monotonic() >= deadline:
                timed_out = True
                break
            time.sleep(POLL_INTERVAL_S)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
            os.killpg(proc.pid, signal.SIGKILL)
        usage = _reap(proc)
    return timed_out, usage


def _reap(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Reap the child with ``wait4`` (its rusage), else as Popen does."""
    if proc.returncode is None and hasattr(os, "wait4"):
        try:
            _, status, rusage = os.wait4(proc.pid, 0)
        except ChildProcessError:  # already reaped elsewhere
            proc.wait()
            return {}
        proc.returncode = os.waitstatus_to_exitcode(status)
        return usage_of(rusage)
    proc.wait()
    return {}


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    if hasattr(os, "waitid"):
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        try:
            return os.waitid(os.P_PID, proc.pid, flags) is not None
        except ChildProcessError:  # already reaped (e.g. SIGCHLD ignored in this process)
            return True
    return proc.poll() is not None  # reaps: a tiny window for group-id reuse
