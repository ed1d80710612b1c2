"""The confined candidate's process tree: forks, a PID namespace's init, and exiting the
way a child did. Pure: no torch import. Used by :func:`lemo_nade.engine.confine.contain`
in the sandboxed child only.

Every helper process here dies with its parent (``PR_SET_PDEATHSIG``) and never returns
into the caller's code: a fork that fails ends with :data:`CONFINE_FAILED`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from lemo_nade.engine import linux
from lemo_nade.engine.linux import LINUX, PR_SET_PDEATHSIG
from lemo_nade.engine.protocol import CONFINE_FAILED


def die_with_parent() -> None:
    """``PR_SET_PDEATHSIG``: SIGKILL this process when its parent dies (Linux)."""
    if LINUX:
        linux.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_as_namespace_init(body: Callable[[], int]) -> int:
    """Fork pid 1 of the new PID namespace, which forks the candidate and reaps orphans.

    Returns the candidate's wait status. When pid 1 exits the kernel kills everything
    left in the namespace.
    """
    status_r, status_w = os.pipe()
    alive_r, alive_w = os.pipe()  # this process holds alive_w: EOF means it died
    init = os.fork()
    if init == 0:
        code = 1
        try:
            os.close(status_r)
            os.close(alive_w)
            die_with_parent()
            # pid 1 ignores signals it has no handler for: drop Python's SIGINT handler
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if select.select([alive_r], [], [], 0)[0]:  # the parent died before the prctl
                os._exit(1)
            candidate = os.fork()
            if candidate == 0:
                os.close(status_w)
                os.close(alive_r)
                die_with_parent()
                os._exit(call(body))
            while True:  # pid 1 reaps orphans until the candidate itself ends
                pid, status = os.waitpid(-1, 0)
                if pid == candidate:
                    break
            os.write(status_w, struct.pack("i", status))
            code = 0
        finally:
            os._exit(code)
    os.close(status_w)
    os.close(alive_r)
    _, init_status = os.waitpid(init, 0)
    with os.fdopen(status_r, "rb") as pipe:
        data = pipe.read(4)
    os.close(alive_w)
    return struct.unpack("i", data)[0] if len(data) == 4 else init_status


def fork_and_wait(child: Callable[[], object]) -> int:
    """Run ``child`` in a forked process; its wait status."""
    pid = os.fork()
    if pid == 0:
        try:
            die_with_parent()
            child()
        finally:
            os._exit(CONFINE_FAILED)
    return os.waitpid(pid, 0)[1]


def mirror_exit(status: int) -> NoReturn:
    """Exit the way a child with wait status ``status`` did: same code, same signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def call(body: Callable[[], int]) -> int:
    """``body()``'s exit code; 1 (with the traceback on stderr) if it raised anything."""
    try:
        code = int(body())
    except BaseException:  # the candidate may raise anything, SystemExit included
        with contextlib.suppress(BaseException):
            traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return code


def say(text: str) -> None:
    """A line straight to fd 2 (the log): nothing is buffered to be lost at ``os._exit``."""
    with contextlib.suppress(OSError):
        os.write(2, (text + "\n").encode(errors="replace"))


def thread_count() -> int:
    """Threads of this process (unshare and Landlock need exactly one)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1
