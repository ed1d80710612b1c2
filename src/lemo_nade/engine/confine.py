"""Kernel-level confinement of one candidate process, without privileges (Linux).

Pure: no torch import; the Linux calls are :mod:`lemo_nade.engine.linux` (ctypes into
libc), the Landlock rules :mod:`lemo_nade.engine.access`, the forks
:mod:`lemo_nade.engine.proctree`. Confining runs in the sandboxed child
(:mod:`lemo_nade.engine.forkserver` and :mod:`lemo_nade.engine.worker`); the run process
only builds a :class:`Spec` and reads :class:`Features`. :func:`contain` turns the
calling process (single-threaded, already in its own session, with stdout/stderr on the
log) into a confined one and runs the candidate, in this order:

1. started as root: become uid/gid 65534 (nobody), if nobody can read the Python
   installation (:func:`probe` checks; otherwise the candidate stays root, confined by
   the steps below, but the kernel exempts uid 0 from ``RLIMIT_NPROC``);
2. ``unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)`` with the uid/gid mapped to
   themselves: a fresh PID namespace (the candidate sees only its own processes, and
   when the namespace's first process dies the kernel SIGKILLs every process in it, so
   ``setsid``/double-fork escapes die too), an empty network namespace (only a downed
   loopback: no network at all), and a per-sandbox task count for ``RLIMIT_NPROC`` (in
   a user namespace the kernel counts the namespace's own tasks);
3. rlimits: address space (when a memory limit is given), CPU seconds (a backstop behind
   the parent's wall clock), file size, open files, tasks (processes and threads), no
   core dumps; ``oom_score_adj`` 1000, so the kernel's OOM killer takes the candidate,
   not the run; the temporary directory as cwd and the scrubbed environment;
4. with the PID namespace: a tiny init (pid 1, reaps orphans) and the candidate as its
   child; the exit status is passed back up, so the caller sees the candidate's own
   exit code or signal. The candidate then locks itself down (:func:`lock_down`):
5. ``PR_SET_NO_NEW_PRIVS`` and a Landlock domain: read-only access to the Python
   installation, ``/usr``, ``/lib*``, the ``lemo_nade`` package, the dataset, the CPU
   list, the RAPL counters and its own ``/proc/PID``; full access beneath the temporary
   directory; nothing else (no ``$HOME``, ``/tmp``, ``/etc``, other processes' ``/proc``,
   the run directory). ABI 4+ also denies TCP bind and connect; ABI 6+ stops signals to
   processes outside the sandbox and connections to abstract unix sockets; ptrace of
   outside processes is denied at every ABI;
6. a seccomp filter: ``socket``, ``ptrace``, ``process_vm_readv/writev``, ``bpf``,
   io_uring, and the metadata changes Landlock does not mediate (``chmod``, ``chown``,
   ``utimes``, extended attributes; on any path, the candidate's own files included)
   fail with EPERM; so does starting a process (``fork``, ``vfork``, ``clone`` without
   ``CLONE_THREAD``; ``clone3`` gets ENOSYS so libc falls back to ``clone``) unless the
   spec allows processes (``torch.compile`` runs a C++ compiler). x86_64 and aarch64;
   other syscall ABIs (e.g. ``int 0x80``) kill the process;
7. all capabilities dropped (the user namespace grants a full set inside it).

Each step runs only if :func:`probe` found it works here (it tries them in a throw-away
child); a step that probed fine but then fails is fatal for the candidate
(:data:`CONFINE_FAILED` exit code), so the sandbox never silently runs a candidate with
less isolation than it reports. Unprivileged user namespaces are off on some
distributions (``kernel.unprivileged_userns_clone=0``, or Ubuntu 24.04's AppArmor
restriction); Landlock needs Linux 5.13+ with ``landlock`` in the LSM list; seccomp
filters need x86_64 or aarch64 here. Without user namespaces there is no network or
PID namespace (seccomp still refuses ``socket`` and new processes), and
``RLIMIT_NPROC`` counts every process of the user: it is then set to the number of tasks
on the system plus :data:`EXTRA_TASKS`. On a GPU host Landlock also allows the NVIDIA
device files and reading ``/proc`` and ``/sys`` (the CUDA driver needs them; not tested
in this project's CPU-only CI). On macOS none of this exists: :func:`probe` reports
nothing and :func:`contain` only sets rlimits. Windows is not supported (POSIX only).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

from lemo_nade.engine import access, linux
from lemo_nade.engine.linux import (
    ARCH,
    CLONE_NEWNET,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    LINUX,
    PR_SET_DUMPABLE,
    PR_SET_NAME,
    PR_SET_NO_NEW_PRIVS,
)
from lemo_nade.engine.proctree import (
    call,
    fork_and_wait,
    mirror_exit,
    run_as_namespace_init,
    say,
    thread_count,
)
from lemo_nade.engine.protocol import CONFINE_FAILED

FILE_SIZE_LIMIT_BYTES = 256 * 2**20
OPEN_FILES_LIMIT = 1024
TASKS_PER_CPU = 4  # threads a candidate may run per CPU (torch pools), plus:
EXTRA_TASKS = 64  # processes and threads beyond those, all together
NOBODY = 65534  # the uid (and gid) candidates get when the tool runs as root
NAME = b"lemo-candidate"  # comm of the candidate process (ps, top, /proc/PID/comm)


@dataclass(frozen=True)
class Features:
    """What :func:`probe` found usable on this kernel, for this user."""

    namespaces: bool = False  # user + PID + network namespaces
    landlock_abi: int = 0  # 0: no Landlock
    seccomp: bool = False
    run_as: int | None = None  # when started as root: the unprivileged uid candidates get
    errors: tuple[str, ...] = ()  # why a feature is missing, one line each

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Features:
        return cls(
            namespaces=bool(data.get("namespaces")),
            landlock_abi=int(data.get("landlock_abi", 0)),
            seccomp=bool(data.get("seccomp")),
            run_as=None if data.get("run_as") is None else int(data["run_as"]),
            errors=tuple(data.get("errors", ())),
        )

    def describe(self) -> str:
        """One line per mechanism: on or off."""
        abi = self.landlock_abi
        lines = [
            f"PID+network namespaces: {'yes' if self.namespaces else 'no'}",
            f"Landlock: {'ABI ' + str(abi) if abi else 'no'}"
            + (" (files; TCP)" if abi >= 4 else " (files)" if abi else "")
            + (" (+signals, abstract unix sockets)" if abi >= 6 else ""),
            f"seccomp (no socket, ptrace, io_uring, chmod/chown/utimes/xattrs): "
            f"{'yes' if self.seccomp else 'no'}",
        ]
        if self.run_as is not None:
            lines.append(f"started as root: candidates run as uid {self.run_as}")
        return "\n".join(lines + [f"  ({e})" for e in self.errors])


@dataclass(frozen=True)
class Spec:
    """How to confine one candidate."""

    workdir: str  # the candidate's cwd, HOME and TMPDIR: the only writable place
    read_paths: tuple[str, ...] = ()  # extra read-only paths (the dataset)
    memory_limit_mb: int | None = None
    cpu_time_s: int = 3600
    threads: int = 1  # the candidate's torch threads, for the task limit
    env: tuple[tuple[str, str], ...] = ()  # the candidate's whole environment
    allow_processes: bool = False  # may it start processes (torch.compile runs a compiler)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        return cls(
            workdir=str(data["workdir"]),
            read_paths=tuple(data.get("read_paths", ())),
            memory_limit_mb=data.get("memory_limit_mb"),
            cpu_time_s=int(data.get("cpu_time_s", 3600)),
            threads=int(data.get("threads", 1)),
            env=tuple((str(k), str(v)) for k, v in data.get("env", ())),
            allow_processes=bool(data.get("allow_processes", False)),
        )


# ---- the parts a sandboxed process runs --------------------------------------------


def contain(spec: Spec, features: Features, body: Callable[[], int]) -> NoReturn:
    """Confine this process as ``features`` allow, run ``body`` and exit with its status.

    The caller is the sandbox child: in its own session, stdout/stderr on the log. This
    function never returns; a failure to confine exits with :data:`CONFINE_FAILED`.
    Namespaces, rlimits, the working directory and the environment are set here; with a
    PID namespace the candidate is a grandchild, and it locks itself down (Landlock,
    seccomp, capabilities) just before ``body`` runs (:func:`lock_down`).
    """
    if LINUX and thread_count() > 1:  # unshare and Landlock need a single thread
        mirror_exit(fork_and_wait(lambda: contain(spec, features, body)))
    try:
        set_name(NAME)
        if features.run_as is not None and os.getuid() == 0:
            os.chown(spec.workdir, features.run_as, features.run_as)
            _drop_to(features.run_as)
        uid, gid = os.getuid(), os.getgid()
        if features.namespaces:
            linux.unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)
            linux.map_ids(uid, gid)
        _prefer_for_oom_killer()
        os.chdir(spec.workdir)
        os.environ.clear()
        os.environ.update(dict(spec.env))
        apply_rlimits(spec, in_user_namespace=features.namespaces)
    except Exception as exc:
        say(f"sandbox: could not confine the candidate: {type(exc).__name__}: {exc}")
        os._exit(CONFINE_FAILED)

    def candidate() -> int:
        try:
            lock_down(spec, features)
        except Exception as exc:
            say(f"sandbox: could not confine the candidate: {type(exc).__name__}: {exc}")
            return CONFINE_FAILED
        return body()

    if features.namespaces:  # this process is outside the new PID namespace: fork into it
        mirror_exit(run_as_namespace_init(candidate))
    os._exit(call(candidate))


_LOCKED: list[tuple[int, str]] = []  # this process's Landlock ABI and working directory


def lock_down(spec: Spec, features: Features) -> None:
    """The candidate process's last step before its code runs: irreversible restrictions."""
    if features.landlock_abi or features.seccomp:
        linux.prctl(PR_SET_NO_NEW_PRIVS, 1)
    if features.landlock_abi:
        access.restrict(features.landlock_abi, spec.workdir, spec.read_paths, own_proc=True)
        _LOCKED.append((features.landlock_abi, spec.workdir))
    if features.seccomp:
        linux.seccomp(allow_processes=spec.allow_processes)
    if LINUX:
        linux.drop_capabilities()


def forget_read_paths() -> None:
    """Stack one more Landlock layer without the spec's read paths: the measuring child
    calls it once the evaluation data is in memory, so the graph it runs next cannot
    read that file (or any dataset) again. A no-op where Landlock is not in force."""
    if _LOCKED:
        abi, workdir = _LOCKED[-1]
        access.restrict(abi, workdir, (), own_proc=True)


def apply_rlimits(spec: Spec, in_user_namespace: bool) -> None:
    """Lower soft and hard limits (the candidate cannot raise them again)."""
    limits = [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT_BYTES),
        (resource.RLIMIT_NOFILE, OPEN_FILES_LIMIT),
        (resource.RLIMIT_CPU, max(1, spec.cpu_time_s)),
    ]
    if spec.memory_limit_mb is not None:
        limits.append((resource.RLIMIT_AS, spec.memory_limit_mb * 2**20))
    if hasattr(resource, "RLIMIT_NPROC"):
        tasks = TASKS_PER_CPU * max(spec.threads, os.cpu_count() or 1) + EXTRA_TASKS
        if not in_user_namespace:  # counted over all of the user's processes
            tasks += _system_task_count()
        limits.append((resource.RLIMIT_NPROC, tasks))
    for kind, value in limits:
        _, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(kind, (value, value))


def _prefer_for_oom_killer() -> None:
    """``oom_score_adj`` 1000: when memory runs out the kernel kills the candidate first,
    not the run process (raising one's own score needs no privilege)."""
    if LINUX:
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")


def set_name(name: bytes) -> None:
    """The process name ``ps`` and ``/proc/PID/comm`` show (Linux; 15 bytes at most)."""
    if LINUX:
        with contextlib.suppress(OSError):
            linux.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]))


def probe() -> Features:
    """Try every mechanism in a throw-away child; what worked there is available."""
    if not LINUX or ARCH is None:
        return Features(errors=(f"not available on {sys.platform}/{platform.machine()}",))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            report = _probe_here()
            os.write(write_fd, json.dumps(report.to_dict()).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    try:
        return Features.from_dict(json.loads(data))
    except ValueError:
        return Features(errors=("the probe child died",))


def _system_task_count() -> int:
    """All tasks on the system (an upper bound of the user's): /proc/loadavg's 4th field."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        return 4096


def _probe_here() -> Features:
    """Runs in the probe child: try each mechanism, keep what worked."""
    errors: list[str] = []
    run_as = None
    if os.getuid() == 0:  # candidates run as nobody if nobody can read the installation
        if fork_and_wait(_check_unprivileged_reads) == 0:
            run_as = NOBODY
            _drop_to(NOBODY)  # and the rest is probed as nobody, as candidates will run
        else:
            errors.append(
                f"uid {NOBODY} cannot read the Python installation: candidates run as root"
            )
    namespaces = False
    try:
        uid, gid = os.getuid(), os.getgid()
        linux.unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)
        linux.map_ids(uid, gid)
        pid = os.fork()  # the first process of the new PID namespace
        if pid == 0:
            os._exit(0 if os.getpid() == 1 else 1)
        namespaces = os.waitpid(pid, 0)[1] == 0
        if not namespaces:
            errors.append("PID namespace: the first child is not pid 1")
    except OSError as exc:
        errors.append(f"user namespaces: {exc}")
    abi = 0
    seccomp = False
    try:
        linux.prctl(PR_SET_NO_NEW_PRIVS, 1)
        abi = linux.landlock_abi()
        if abi:
            access.restrict(abi, "/nonexistent")
        else:
            errors.append("Landlock: not supported or not enabled by this kernel")
    except OSError as exc:
        errors.append(f"Landlock: {exc}")
        abi = 0
    try:
        linux.seccomp(allow_processes=False)
        seccomp = True
    except OSError as exc:
        errors.append(f"seccomp: {exc}")
    try:
        linux.drop_capabilities()
    except OSError as exc:
        errors.append(f"capabilities: {exc}")
    return Features(
        namespaces=namespaces,
        landlock_abi=abi,
        seccomp=seccomp,
        run_as=run_as,
        errors=tuple(errors),
    )


def _drop_to(uid: int) -> None:
    """Root becomes ``uid`` (group ``uid``, no supplementary groups) for good."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # a uid change makes the process non-dumpable, which gives its /proc/self files to
    # root; dumpable again, it may write its own uid_map
    linux.prctl(PR_SET_DUMPABLE, 1)


def _check_unprivileged_reads() -> None:
    _drop_to(NOBODY)
    needed = [os.path.dirname(os.__file__), *access.loaded_package_dirs()]  # + stdlib
    ok = all(os.access(p, os.R_OK | os.X_OK) for p in needed)
    os._exit(0 if ok else 1)
