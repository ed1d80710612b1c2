"""The fork server: ``python -m lemo_nade.engine.forkserver``, started by a
:class:`lemo_nade.sandbox.Sandbox` (one per run) through :mod:`lemo_nade.sandbox.launch`.

Importing torch costs about a second (more on a loaded machine); a fresh interpreter per
candidate pays it every time. This process imports torch and :mod:`lemo_nade.engine`
once, probes which kernel isolation works (:func:`lemo_nade.engine.confine.probe`), and
then, for each request, forks a clean child that confines itself
(:func:`lemo_nade.engine.confine.contain`)
and runs the candidate. It runs no torch operation itself, so no thread pool or CUDA
context exists to be inherited in a broken state; ``OPENBLAS_NUM_THREADS=1`` (set by the
sandbox) keeps numpy's import from starting threads, so the server is single-threaded
and ``fork`` is safe.

Protocol, one JSON object per line. The server writes ``{"ready": true, "pid": P,
"features": {...}}`` once, then for every request line ``{"job", "spec", "result",
"log", "timeout_s", "confine"}`` it answers ``{"pid": C, "returncode": R, "timed_out": B}``
(``returncode`` as in :mod:`subprocess`: negative for a signal) or ``{"error": TEXT}``.
It exits on end of input. It is started with a scrubbed environment, in its own
session, with ``PR_SET_PDEATHSIG`` (it dies with the run process) and sets the same on
each child, so a SIGKILLed run leaves neither server nor candidate behind.

The server enforces the wall clock: on expiry it SIGKILLs the child's process group
(the child is a session leader; with a PID namespace that also ends every process the
candidate started). The group is killed after a normal exit too, and the child is
reaped only then, so its group id cannot be reused in between.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from lemo_nade.engine import access, confine, worker
from lemo_nade.engine.proctree import die_with_parent
from lemo_nade.engine.protocol import SETUP_FAILED

SERVER_NAME = b"lemo-forkserver"


def preload() -> None:
    """Import what the training path would import lazily in every child: Adam's
    constructor imports ``torch._dynamo`` (2-3 s on a 2-core machine, more than training
    a small candidate). Imports only: no torch operation runs and no thread starts.

    The import creates torch's compile-cache directory; it is pointed at "/", which
    exists, so nothing is created (the server has no directory of its own), and the
    children, which never import it again, keep the default under their own TMPDIR."""
    previous = os.environ.get(INDUCTOR_CACHE_VAR)
    os.environ[INDUCTOR_CACHE_VAR] = os.path.abspath(os.sep)
    try:
        import torch._dynamo
        import torch._export.serde.serialize
        import torch._functorch.aot_autograd
        import torch.export
        import torch.export.pt2_archive._package
        import torch.fx.experimental.proxy_tensor  # noqa: F401

        _warm_exporter()
    finally:
        if previous is None:
            del os.environ[INDUCTOR_CACHE_VAR]
        else:
            os.environ[INDUCTOR_CACHE_VAR] = previous


INDUCTOR_CACHE_VAR = "TORCHINDUCTOR_CACHE_DIR"


def _warm_exporter() -> None:
    """Hand a small model over once, both ways (:func:`phases.warm_up`), so every child
    finds the exporter's and the loader's lazy state built. One intra-op thread, tiny
    tensors: no thread pool starts (the lifecycle test counts the server's threads)."""
    import torch

    from lemo_nade.engine import phases

    torch.set_num_threads(1)  # each child sets its own
    phases.warm_up()


def main() -> int:
    confine.set_name(SERVER_NAME)
    die_with_parent()
    preload()
    features = confine.probe()
    access.default_read_paths()  # computed once here, inherited by every child
    server_pid = os.getpid()
    _send({"ready": True, "pid": server_pid, "features": features.to_dict()})
    none = confine.Features()
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            reply = serve(request, features if request.get("confine", True) else none, server_pid)
        except Exception as exc:  # a bad request must not end the server
            reply = {"error": f"fork server: {type(exc).__name__}: {exc}"}
        _send(reply)
    return 0


def serve(request: dict[str, Any], features: confine.Features, server_pid: int) -> dict[str, Any]:
    """Fork one confined child for ``request``, wait for it (or the wall clock), reap it."""
    spec = confine.Spec.from_dict(request["spec"])
    timeout_s = float(request["timeout_s"])
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    log_fd = os.open(request["log"], flags)
    null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                _child(request, spec, features, server_pid, log_fd, null_fd)
            finally:  # never back into the server loop in a child
                os._exit(SETUP_FAILED)
    finally:
        os.close(log_fd)
        os.close(null_fd)
    try:
        timed_out = wait_or_timeout(pid, timeout_s)
    finally:
        kill_group(pid)
        _, status, usage = os.wait4(pid, 0)
    return {
        "pid": pid,
        "returncode": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        # what the child used, seen from here (its reaped descendants included): the
        # run process measures training energy and time from these, not from the child
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_kb": usage.ru_maxrss,
    }


def _child(
    request: dict[str, Any],
    spec: confine.Spec,
    features: confine.Features,
    server_pid: int,
    log_fd: int,
    null_fd: int,
) -> NoReturn:
    try:
        os.setsid()
        die_with_parent()
        if os.getppid() != server_pid:  # the server died before the prctl
            os._exit(SETUP_FAILED)
        os.dup2(null_fd, 0)  # also closes the server's request and reply pipes here
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.close(null_fd)
    except BaseException:
        os._exit(SETUP_FAILED)
    job, result = request["job"], Path(request["result"])
    confine.contain(spec, features, lambda: worker.run_request(job, result))


def wait_or_timeout(pid: int, timeout_s: float) -> bool:
    """Wait for child ``pid`` to exit without reaping it; True when time ran out first."""
    deadline = time.monotonic() + timeout_s
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)  # Linux 5.3+: readable when the child exits
    try:
        while not _exited(pid):
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.01))
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def kill_group(pid: int) -> None:
    """SIGKILL the child's process group (and the child, in case it had no group yet)."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def _exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _send(message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


if __name__ == "__main__":
    sys.exit(main())
