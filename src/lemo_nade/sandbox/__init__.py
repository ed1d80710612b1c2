"""Run one candidate in a sandboxed child and turn whatever happens into an Evaluation.

Main-process side: no torch import. A run opens one :class:`Sandbox` (a context
manager) and calls :meth:`Sandbox.evaluate` per candidate; that never raises for
anything a candidate does: a policy rejection, a crash, a hang or a garbled result all
come back as an :class:`~lemo_nade.records.Evaluation` with a status, the error text and
the tail of the child's output. :func:`evaluate` is a single evaluation in a sandbox of
its own. Template: karpathy/nanochat's ``execution.py``.

How a candidate runs:

- static policy first (:mod:`lemo_nade.sandbox.policy`); a rejected candidate starts no process;
- a new temporary directory per candidate (cwd, HOME and TMPDIR; removed after; one
  left behind by a run that was SIGKILLed is removed by the next run's first candidate;
  :mod:`lemo_nade.sandbox.workdirs`);
- a fork server (:mod:`lemo_nade.engine.forkserver`, Linux) per :class:`Sandbox`: one
  long-lived process that imported torch once forks a clean child per candidate, so a
  candidate does not pay for a fresh ``import torch``. The sandbox starts it with its
  first candidate and stops it when closed. It starts with the scrubbed environment
  below, in its own session, and dies with the run process (``PR_SET_PDEATHSIG``), as
  does every child it forks. If it cannot start, or with ``fresh_process=True`` or
  ``Sandbox(fork_server=False)``, or off Linux, or with ``LEMO_NADE_FORKSERVER=0``, each
  candidate gets a fresh ``python -m lemo_nade.engine.worker`` instead (same limits,
  about a second slower);
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
- the result file is opened without following links and must be a small regular file
  (:mod:`lemo_nade.sandbox.outcome`; the files and exit codes the two sides share are
  :mod:`lemo_nade.engine.protocol`, which imports nothing from this side).

What is and is not covered, per platform:

- Linux with unprivileged user namespaces, Landlock and seccomp (e.g. this project's
  development VM: kernel 6.18, Landlock ABI 7, x86_64): all of the above; the hostile
  suite (tests/test_hostile_*.py) runs there. Not covered: a candidate can read what the
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

import functools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from lemo_nade.datasets import DATASETS, builtin_path
from lemo_nade.engine import confine
from lemo_nade.engine.protocol import LOG_FILE, RESULT_FILE
from lemo_nade.records import EvalJob, Evaluation, Status
from lemo_nade.sandbox import launch, outcome, policy, split, workdirs
from lemo_nade.sandbox.workdirs import sweep_stale_workdirs

__all__ = ["Sandbox", "evaluate", "isolation", "sweep_stale_workdirs"]

CPU_GRACE_S = 10  # RLIMIT_CPU = timeout x CPUs + this (the wall clock comes first)
LOG_CAP_BYTES = 64_000  # of the child's output, read back as Evaluation.log_tail


class Sandbox:
    """One run's sandbox: candidates one at a time, through a fork server of its own.

    The server starts with the first candidate that needs it and stops at :meth:`close`
    (the end of the ``with`` block); a server that died is replaced at the next
    candidate. ``fork_server=False``: every candidate in a fresh interpreter, which is
    cheaper for a single candidate than starting a server (see :func:`evaluate`).
    """

    def __init__(self, fork_server: bool = True) -> None:
        self._server = launch.ForkServer() if fork_server else None
        self.prepared = split.PreparedData()  # the search protocol's data files, per split

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the fork server, if one runs (a later candidate would start a new one)."""
        if self._server is not None:
            self._server.stop()
        self.prepared.remove()

    def server_pid(self) -> int | None:
        """The fork server's pid while one runs for this sandbox in this process."""
        return self._server.pid() if self._server is not None else None

    def evaluate(
        self,
        job: EvalJob,
        timeout_s: float,
        memory_limit_mb: int | None = None,
        *,
        check_policy: bool = True,
        log_cap_bytes: int = LOG_CAP_BYTES,
        fresh_process: bool = False,
        workdir: Path | None = None,
    ) -> Evaluation:
        """Policy-check ``job.code``, then build, train and measure it in a sandboxed child.

        ``check_policy=False`` skips the static policy (tests of the kernel layer, the
        project's own code). ``workdir``: a directory to use (and keep) instead of a
        fresh temporary one; the only place the child may write (under the split
        protocol, the training child's). ``retrain`` keeps its checkpoints there."""
        if check_policy:
            verdict = policy.check(job.code)
            if verdict is not None:
                status, message = verdict
                return Evaluation(status, error=message)
        start = time.perf_counter()
        workdirs.sweep_once()
        try:
            if split.applies(job):
                run = functools.partial(
                    self.run_phase,
                    memory_limit_mb=memory_limit_mb,
                    log_cap_bytes=log_cap_bytes,
                    fresh_process=fresh_process,
                )
                evaluation = split.evaluate(job, timeout_s, run, self.prepared, workdir)
            else:
                with workdirs.workdir(workdir) as where:
                    evaluation, _ = self._run_in(
                        where, job, timeout_s, memory_limit_mb, log_cap_bytes, fresh_process
                    )
        except (OSError, subprocess.SubprocessError) as exc:  # e.g. rlimits could not be set
            evaluation = Evaluation(
                Status.CRASHED, error=f"sandbox: could not run the child: {exc}"
            )
        return replace(evaluation, wall_time_s=time.perf_counter() - start)

    def run_phase(
        self,
        where: Path,
        job: EvalJob,
        timeout_s: float,
        read_paths: tuple[str, ...],
        *,
        memory_limit_mb: int | None,
        log_cap_bytes: int,
        fresh_process: bool,
    ) -> tuple[Evaluation, launch.Outcome | None]:
        """One child of the split search protocol in ``where``, reading ``read_paths``."""
        return self._run_in(
            where, job, timeout_s, memory_limit_mb, log_cap_bytes, fresh_process, read_paths
        )

    def isolation(self) -> confine.Features:
        """The kernel isolation candidates get on this machine (starts the fork server)."""
        if not _confine_enabled():
            return confine.Features(errors=("turned off by LEMO_NADE_CONFINE=0",))
        if self._server is not None and _forkserver_allowed():
            features = self._server.features_or_none()
            if features is not None:
                return features
        return _probe_in_subprocess()

    def _run_in(
        self,
        workdir: Path,
        job: EvalJob,
        timeout_s: float,
        memory_limit_mb: int | None,
        log_cap_bytes: int,
        fresh_process: bool,
        read_paths: tuple[str, ...] | None = None,
    ) -> tuple[Evaluation, launch.Outcome | None]:
        result = workdir / RESULT_FILE
        request = {
            "job": job.to_dict(),
            "spec": _spec(workdir, job, timeout_s, memory_limit_mb, read_paths).to_dict(),
            "confine": _confine_enabled(),
            "result": str(result),
            "log": str(workdir / LOG_FILE),
            "timeout_s": timeout_s,
        }
        # The parent keeps its own handle on the log: whatever the child does to the
        # directory entry, the tail is read from the file it actually wrote.
        with (workdir / LOG_FILE).open("w+b") as log:
            ended = None
            if self._server is not None and not fresh_process and _forkserver_allowed():
                ended = self._server.run(request, timeout_s)
            if ended is None:
                ended = launch.run_fresh(workdir, request, log, timeout_s, memory_limit_mb)
            tail = outcome.read_tail(log, log_cap_bytes)
        return outcome.evaluation_of(ended, result, tail, timeout_s), ended


def evaluate(
    job: EvalJob, timeout_s: float, memory_limit_mb: int | None = None, **options: Any
) -> Evaluation:
    """One candidate in a sandbox of its own, in a fresh interpreter (a fork server pays
    for itself from the second candidate on: a run keeps one :class:`Sandbox` open).
    ``options`` as for :meth:`Sandbox.evaluate`."""
    with Sandbox(fork_server=False) as box:
        return box.evaluate(job, timeout_s, memory_limit_mb, **options)


def isolation() -> confine.Features:
    """The kernel isolation candidates get on this machine: what a run's fork server
    finds (one is started for the question and stopped)."""
    with Sandbox() as box:
        return box.isolation()


def _probe_in_subprocess() -> confine.Features:
    """:func:`lemo_nade.engine.confine.probe` in a fresh interpreter (no fork server)."""
    probe = (
        "import json; from lemo_nade.engine import confine; "
        "print(json.dumps(confine.probe().to_dict()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    try:
        return confine.Features.from_dict(json.loads(done.stdout))
    except ValueError:
        return confine.Features(errors=(f"probe failed: {done.stderr.strip()[-500:]}",))


def _spec(
    workdir: Path,
    job: EvalJob,
    timeout_s: float,
    memory_limit_mb: int | None,
    read_paths: tuple[str, ...] | None = None,
) -> confine.Spec:
    """The child's confinement; ``read_paths`` replaces the dataset's files (a phase of
    the split protocol reads only its prepared file). The package's data folder, where
    a built-in dataset lives, is readable only where the dataset's files are."""
    cpus = os.cpu_count() or 1
    threads = job.threads or cpus
    if read_paths is None:
        read_paths = (job.data_dir,) if job.data_dir else ()
        if job.dataset.startswith("npz:"):
            read_paths = (*read_paths, job.dataset[4:])
        info = DATASETS.get(job.dataset)
        if info is not None and not info.needs_data_dir:  # shipped in the package's data
            read_paths = (*read_paths, str(builtin_path(job.dataset).parent))  # folder
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
