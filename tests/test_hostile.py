"""Hostile candidates: each ends as a recorded failed candidate with a specific status,
the run goes on, and nothing outside the sandbox's temporary directory changes.

Two layers are tested. Policy cases go through :func:`sandbox.evaluate` and must be
rejected before any process starts. Runtime cases use :func:`sandbox.run_child`, which
skips the policy, as if the policy had missed them: the kernel isolation (namespaces,
Landlock, seccomp, rlimits) must contain them. A runtime case that needs a mechanism
this machine lacks is skipped, and says which (see ``sandbox.isolation()``).

The ``world`` fixture puts a secret file in a directory beside the sandbox's temp
dirs, a fake API key in this process's environment, and after every test checks that
the directory is byte-for-byte unchanged, that no sandbox temp dir is left, and that
no candidate process is alive.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from lemo_nade import sandbox
from lemo_nade.engine import confine
from lemo_nade.records import EvalJob, Evaluation, Status
from proctools import alive, eventually, live_candidates, with_cmdline

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

KEY = "sk-hostile-test-0123456789abcdef"
SECRET = "sentinel-secret-5f1c"
NET = "\nclass Net:\n    def __init__(self):\n        raise ValueError('not reached')\n"
TINY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))
"""


@dataclass
class World:
    outside: Path  # beside the sandbox's temp dirs; the candidate must not touch it
    sentinel: Path
    sandbox_tmp: Path
    before: dict[str, tuple[object, ...]]

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        """Every entry's mode, owner, mtime, extended attributes and content digest."""
        state: dict[str, tuple[object, ...]] = {}
        for path in sorted(self.outside.rglob("*")):
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            xattrs: list[str] = []
            with contextlib.suppress(OSError):
                xattrs = os.listxattr(path, follow_symlinks=False)
            state[str(path.relative_to(self.outside))] = (
                info.st_mode,
                info.st_uid,
                info.st_gid,
                info.st_mtime_ns,
                tuple(sorted(xattrs)),
                digest,
            )
        return state

    def assert_untouched(self) -> None:
        assert self.snapshot() == self.before, "something outside the sandbox changed"
        assert self.sentinel.read_text() == SECRET
        left = [p.name for p in self.sandbox_tmp.iterdir()]
        assert left == [], "a sandbox temp dir was left behind"
        assert eventually(lambda: live_candidates() == []), "a candidate process outlived it"


@pytest.fixture(scope="module")
def features() -> confine.Features:
    return sandbox.isolation()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    sentinel = outside / "secret.txt"
    sentinel.write_text(SECRET)
    (outside / "sub" / "notes.txt").write_text("untouched")
    sandbox_tmp = tmp_path / "sandbox"
    sandbox_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sandbox_tmp))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    world = World(outside, sentinel, sandbox_tmp, {})
    world.before = world.snapshot()
    yield world
    world.assert_untouched()


def needs(features: confine.Features, *, landlock: int = 0, namespaces: bool = False,
          seccomp: bool = False) -> None:  # fmt: skip
    if landlock and features.landlock_abi < landlock:
        pytest.skip(f"needs Landlock ABI {landlock}+ (this machine: {features.landlock_abi})")
    if namespaces and not features.namespaces:
        pytest.skip("needs unprivileged user/PID/network namespaces")
    if seccomp and not features.seccomp:
        pytest.skip("needs seccomp")


def _job(code: str) -> EvalJob:
    return EvalJob(code=code, dataset="digits", data_dir=None, epochs=1, batch_size=64)


def run_hostile(
    world: World,
    code: str,
    *,
    policy: bool = False,
    timeout_s: float = 30,
    memory_limit_mb: int | None = None,
) -> Evaluation:
    """Run ``code`` (through the policy, or around it) and check the world is untouched."""
    run = sandbox.evaluate if policy else sandbox.run_child
    evaluation = run(_job(code), timeout_s, memory_limit_mb)
    world.assert_untouched()
    return evaluation


def _seen(evaluation: Evaluation) -> str:
    """What a reporting candidate saw: the text of its final exception."""
    assert evaluation.status is Status.FAILED_BUILD, evaluation.error + evaluation.log_tail
    last = evaluation.error.splitlines()[-1]
    assert last.startswith("RuntimeError: SEEN "), evaluation.error
    return last.removeprefix("RuntimeError: SEEN ")


# ---- the policy rejects these before anything runs ------------------------------------

POLICY_CASES = {
    "import os": "import os\nos.system('id')",
    "import subprocess": "import subprocess\nsubprocess.run(['id'])",
    "import socket": "import socket\nsocket.create_connection(('127.0.0.1', 9))",
    "import ctypes": "import ctypes\nctypes.CDLL(None)",
    "import importlib": "import importlib\nimportlib.import_module('os')",
    "import pickle": "import pickle\npickle.loads(b'')",
    "eval": "eval('1 + 1')",
    "exec": "exec('x = 1')",
    "compile": "compile('x = 1', 'f', 'exec')",
    "open": "open('/etc/passwd').read()",
    "__import__": "__import__('os').system('id')",
    "globals": "globals()['x'] = 1",
    "getattr chain": "import torch\ngetattr(getattr(torch, 'o' + 's'), 'sys' + 'tem')('id')",
    "vars by string": "import torch\nvars(torch)['o' + 's']",
    "subclasses walk": "().__class__.__bases__[0].__subclasses__()",
    "builtins by built string": "b = __builtins__\nb['_' * 2 + 'import' + '_' * 2]('os')",
    "format string walk": "s = '{0.__init__.__globals__}'.format(object)",
    "torch.os": "import torch\ntorch.os.system('id')",
    "from torch import os": "from torch import os\nos.system('id')",
    "match class attribute": (
        "import torch\nmatch torch:\n    case object(os=o):\n        o.system('id')"
    ),
    "generator frame": "g = (i for i in [0])\ng.gi_frame.f_builtins",
    "string annotation": (
        "import torch\ndef f(x: \"torch.os.system('id') or int\") -> None:\n    pass"
    ),
    "typing.ForwardRef": "import typing\ntyping.ForwardRef('1')",
    "torch.load": "import torch\ntorch.load('evil.pt', weights_only=False)",
    "torch.jit.load": "import torch\ntorch.jit.load('evil.pt')",
    "torch.hub": "import torch\ntorch.hub.load('evil/repo', 'model')",
    "cpp_extension": "from torch.utils.cpp_extension import load_inline",
    "storage from_file": "import torch\ntorch.UntypedStorage.from_file('/etc/passwd', False, 64)",
    "torch._C": "import torch._C as c",
    "fx private exec": "import torch.fx\ntorch.fx.graph_module._exec_with_source('x = 1', {})",
    "collect_env shell": "from torch.utils import collect_env\ncollect_env.run('id')",
    "torch.ops library": "import torch\ntorch.ops.load_library('/tmp/evil.so')",
}


@pytest.mark.parametrize("code", POLICY_CASES.values(), ids=POLICY_CASES.keys())
def test_policy_rejects_before_any_process_starts(
    code: str, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    monkeypatch.setattr(sandbox, "_run_in", lambda *a: started.append(a))
    evaluation = run_hostile(world, code + NET, policy=True)
    assert evaluation.status is Status.FAILED_POLICY, evaluation.error
    assert evaluation.error.split(":")[0] in {
        "import",
        "name",
        "attribute",
        "qualname",
        "private",
        "dunder",
        "annotation",
    }
    assert started == []


# ---- files ----------------------------------------------------------------------------

READ_TARGETS = ["sentinel", "outside dir", "/etc/passwd", "home dir", "parent environ"]


@pytest.mark.parametrize("target", READ_TARGETS)
def test_reading_outside_the_temp_dir_is_denied(
    target: str, world: World, features: confine.Features
) -> None:
    needs(features, landlock=1)
    path = {
        "sentinel": str(world.sentinel),
        "outside dir": str(world.outside),
        "/etc/passwd": "/etc/passwd",
        "home dir": str(Path.home()),
        "parent environ": f"/proc/{os.getpid()}/environ",
    }[target]
    code = (
        "import os\n"
        f"path = {path!r}\n"
        "try:\n"
        "    seen = os.listdir(path) if os.path.isdir(path) else open(path, 'rb').read(300)\n"
        "except OSError as exc:\n"
        "    seen = type(exc).__name__\n"
        "raise RuntimeError(f'SEEN {seen!r}')\n"
    )
    seen = _seen(run_hostile(world, code + NET))
    assert seen.strip() == "'PermissionError'"
    assert SECRET not in seen and KEY not in seen


def test_the_environment_has_no_keys(world: World) -> None:
    sandbox.shutdown()  # the fork server starts again, now with the key in our environment
    code = "import os\nraise RuntimeError(f'SEEN {dict(os.environ)!r}')\n"
    seen = _seen(run_hostile(world, code + NET))
    assert KEY not in seen and "OPENAI_API_KEY" not in seen
    assert "'HOME'" in seen  # it did report its environment


def test_other_processes_environments_are_out_of_reach(
    world: World, features: confine.Features
) -> None:
    needs(features, landlock=1)
    holder = subprocess.Popen(["sleep", "30"], env={"OPENAI_API_KEY": KEY, "PATH": os.defpath})
    try:
        code = (
            "import os\n"
            f"key, holder = {KEY!r}.encode(), {holder.pid}\n"
            "hits, errors = [], set()\n"
            "try:\n"
            "    pids = os.listdir('/proc')\n"
            "except OSError as exc:\n"
            "    pids, _ = [str(holder), '1'], errors.add(type(exc).__name__)\n"
            "for pid in pids:\n"
            "    for name in ('environ', 'cmdline'):\n"
            "        try:\n"
            "            data = open(f'/proc/{pid}/{name}', 'rb').read()\n"
            "        except OSError as exc:\n"
            "            errors.add(type(exc).__name__)\n"
            "            continue\n"
            "        if key in data:\n"
            "            hits.append(pid)\n"
            "raise RuntimeError(f'SEEN hits={hits} errors={sorted(errors)}')\n"
        )
        seen = _seen(run_hostile(world, code + NET))
    finally:
        holder.kill()
        holder.wait()
    assert "hits=[]" in seen and "PermissionError" in seen


WRITE_TARGETS = {
    "create beside": "open(OUT + '/new.txt', 'w').write('pwned')",
    "overwrite": "open(OUT + '/secret.txt', 'w').write('pwned')",
    "append": "open(OUT + '/secret.txt', 'a').write('pwned')",
    "delete": "os.remove(OUT + '/secret.txt')",
    "rename": "os.rename(OUT + '/secret.txt', OUT + '/moved.txt')",
    "chmod": "os.chmod(OUT + '/secret.txt', 0o777)",
    "chown": "os.chown(OUT + '/secret.txt', 1, 1)",
    "touch": "os.utime(OUT + '/secret.txt', (0, 0))",
    "xattr": "os.setxattr(OUT + '/secret.txt', 'user.pwned', b'1')",
    "mkdir": "os.mkdir(OUT + '/sub/newdir')",
    "symlink": "os.symlink('/etc/passwd', OUT + '/link')",
    "hard link": "os.link(OUT + '/secret.txt', 'stolen.txt')",
}


@pytest.mark.parametrize("action", WRITE_TARGETS.values(), ids=WRITE_TARGETS.keys())
def test_changing_files_outside_the_temp_dir_is_denied(
    action: str, world: World, features: confine.Features
) -> None:
    needs(features, landlock=1)
    code = (
        "import os\n"
        f"OUT = {str(world.outside)!r}\n"
        "try:\n"
        f"    {action}\n"
        "    seen = 'done'\n"
        "except OSError as exc:\n"
        "    seen = type(exc).__name__\n"
        "raise RuntimeError(f'SEEN {seen}')\n"
    )
    seen = _seen(run_hostile(world, code + NET))
    assert seen.strip() in {"PermissionError", "OSError"}  # EXDEV/EACCES for links


def test_writing_to_the_system_temp_dir_is_denied(world: World, features: confine.Features) -> None:
    needs(features, landlock=1)
    target = Path("/tmp") / f"lemo-hostile-{uuid.uuid4().hex}"
    code = (
        "try:\n"
        f"    open({str(target)!r}, 'w').write('pwned')\n"
        "    seen = 'done'\n"
        "except OSError as exc:\n"
        "    seen = type(exc).__name__\n"
        "raise RuntimeError(f'SEEN {seen}')\n"
    )
    try:
        seen = _seen(run_hostile(world, code + NET))
        assert seen.strip() == "PermissionError" and not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_what_it_writes_inside_is_removed_even_if_made_read_only(world: World) -> None:
    code = (
        "import os\n"
        "os.makedirs('a/b/c')\n"
        "for i in range(50):\n"
        "    open(f'a/b/c/f{i}', 'w').write('x' * 1000)\n"
        "try:\n"
        "    os.chmod('a/b/c', 0o500)\n"
        "    os.chmod('a', 0o500)\n"
        "except OSError:\n"
        "    pass\n"
        "raise RuntimeError('SEEN wrote')\n"
    )
    assert "wrote" in _seen(run_hostile(world, code + NET))


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
    seen = _seen(run_hostile(world, code + NET))
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
    job = replace(_job(code + NET), compile=True)
    evaluation = sandbox.run_child(job, timeout_s=30)
    world.assert_untouched()
    assert "spawned" in _seen(evaluation)
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
    server = sandbox.server_pid()
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
        _seen(run_hostile(world, code + NET))
        assert victim.poll() is None and alive(victim.pid)
        assert server is None or (alive(server) and sandbox.server_pid() == server)
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
    assert _seen(run_hostile(world, code + NET)).strip() == "rc=-1 errno=1"


def test_it_sees_only_its_own_namespace(world: World, features: confine.Features) -> None:
    needs(features, namespaces=True)
    code = "import os\nraise RuntimeError(f'SEEN pid={os.getpid()} ppid={os.getppid()}')\n"
    assert _seen(run_hostile(world, code + NET)).strip() == "pid=2 ppid=1"


# ---- network --------------------------------------------------------------------------


def _network_isolated(features: confine.Features) -> None:
    if not (features.seccomp or features.namespaces or features.landlock_abi >= 4):
        pytest.skip("no network isolation on this machine")


def test_tcp_to_localhost_is_refused(world: World, features: confine.Features) -> None:
    _network_isolated(features)
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    seen = 'connected'\n"
            "except OSError as exc:\n"
            "    seen = type(exc).__name__\n"
            "raise RuntimeError(f'SEEN {seen}')\n"
        )
        seen = _seen(run_hostile(world, code + NET))
        with pytest.raises(BlockingIOError):
            server.accept()
    assert seen.strip() != "connected"


def test_udp_to_localhost_is_refused(world: World, features: confine.Features) -> None:
    _network_isolated(features)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"    s.sendto(b'exfiltrated', ('127.0.0.1', {port}))\n"
            "    seen = 'sent'\n"
            "except OSError as exc:\n"
            "    seen = type(exc).__name__\n"
            "raise RuntimeError(f'SEEN {seen}')\n"
        )
        seen = _seen(run_hostile(world, code + NET))
        with pytest.raises(BlockingIOError):
            listener.recv(100)
    assert seen.strip() != "sent"


def test_unix_socket_of_an_agent_is_refused(world: World, features: confine.Features) -> None:
    needs(features, seccomp=True)  # path sockets are not namespaced; seccomp refuses socket()
    path = Path(tempfile.mkdtemp(prefix="agent-", dir="/tmp")) / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as agent:
        agent.bind(str(path))
        agent.listen()
        agent.setblocking(False)
        code = (
            "import socket\n"
            "try:\n"
            "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            f"    s.connect({str(path)!r})\n"
            "    seen = 'connected'\n"
            "except OSError as exc:\n"
            "    seen = type(exc).__name__\n"
            "raise RuntimeError(f'SEEN {seen}')\n"
        )
        try:
            seen = _seen(run_hostile(world, code + NET))
            with pytest.raises(BlockingIOError):
                agent.accept()
        finally:
            path.unlink()
            path.parent.rmdir()
    assert seen.strip() == "PermissionError"


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


# ---- torch internals and policy bypasses, contained at run time -----------------------


def test_malicious_pickle_through_torch_load_is_contained(
    world: World, features: confine.Features
) -> None:
    needs(features, landlock=1)
    target = world.outside / "pwned.txt"
    code = (
        "import os, torch\n"
        "class Payload:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ('echo pwned > {target}',))\n"
        "torch.save(Payload(), 'evil.pt')\n"
        "rc = torch.load('evil.pt', weights_only=False)\n"
        "raise RuntimeError(f'SEEN rc={rc}')\n"
    )
    seen = _seen(run_hostile(world, code + NET))
    assert "rc=0" not in seen and not target.exists()


def test_match_statement_bypass_is_contained(world: World, features: confine.Features) -> None:
    needs(features, landlock=1)
    target = world.outside / "pwned.txt"
    code = (
        "import torch\n"
        "match torch:\n"
        "    case object(os=o):\n"
        f"        rc = o.system('touch {target}')\n"
        "raise RuntimeError(f'SEEN rc={rc}')\n"
    )
    seen = _seen(run_hostile(world, code + NET))
    assert "rc=0" not in seen and not target.exists()


def test_builtins_reached_by_string_building_are_contained(
    world: World, features: confine.Features
) -> None:
    needs(features, landlock=1)
    code = (
        "g = (i for i in [0])\n"
        "b = g.gi_frame.f_builtins\n"
        "imp = b['_' * 2 + 'import' + '_' * 2]\n"
        "opener = b['op' + 'en']\n"
        "try:\n"
        f"    seen = opener({str(world.sentinel)!r}).read()\n"
        "except OSError as exc:\n"
        "    seen = type(exc).__name__\n"
        "raise RuntimeError(f'SEEN {seen} ' + imp('o' + 's').getcwd())\n"
    )
    seen = _seen(run_hostile(world, code + NET))
    assert seen.strip().startswith("PermissionError") and SECRET not in seen


# ---- the result channel ---------------------------------------------------------------


def test_forged_messages_to_the_server_are_ignored(world: World) -> None:
    forged = b'{"pid": 1, "returncode": 0, "timed_out": false}\n'
    code = (
        "import os\n"
        "for fd in range(64):\n"
        "    try:\n"
        f"        os.write(fd, {forged!r})\n"
        "    except OSError:\n"
        "        pass\n"
        "raise RuntimeError('SEEN real ending')\n"
    )
    assert "real ending" in _seen(run_hostile(world, code + NET))
    assert sandbox.evaluate(_job(TINY), timeout_s=60).status is Status.OK  # server not confused


@pytest.mark.parametrize("make", ["os.symlink", "os.link"])
def test_a_result_linked_to_a_file_outside_is_not_read(make: str, world: World) -> None:
    code = (
        "import os\n"
        "try:\n"
        f"    {make}({str(world.sentinel)!r}, 'result.json')\n"
        "except OSError:\n"
        "    pass\n"
        "os._exit(0)\n"
    )
    evaluation = run_hostile(world, code + NET)
    assert evaluation.status is Status.CRASHED
    assert "wrote no result" in evaluation.error and SECRET not in evaluation.error


# ---- broken models --------------------------------------------------------------------

FORWARD = "return self.head(x.flatten(1))"
BROKEN = {
    "nan": (TINY.replace(FORWARD, FORWARD + " * float('nan')"), Status.FAILED_NAN),
    "wrong shape": (TINY.replace("nn.Linear(64, 10)", "nn.Linear(64, 7)"), Status.FAILED_SHAPE),
    "returns a tuple": (
        TINY.replace(FORWARD, "return (self.head(x.flatten(1)),)"),
        Status.FAILED_SHAPE,
    ),
    "not a module": ("class Net:\n    pass\n", Status.FAILED_BUILD),
    "exits": (
        "class Net:\n    def __init__(self):\n        raise SystemExit(0)\n",
        Status.FAILED_BUILD,
    ),
}


@pytest.mark.parametrize(("code", "status"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_models_get_their_status(code: str, status: Status, world: World) -> None:
    evaluation = run_hostile(world, code, policy=True)
    assert evaluation.status is status, evaluation.error


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("import ctypes\nctypes.string_at(0)\n", "killed by SIGSEGV"),
        ("import os\nos._exit(0)\n", "exited with code 0 and wrote no result"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "killed by SIGKILL"),
    ],
    ids=["segfault", "silent exit", "self kill"],
)
def test_hard_deaths_are_crashes(code: str, needle: str, world: World) -> None:
    evaluation = run_hostile(world, code + NET)
    assert evaluation.status is Status.CRASHED and needle in evaluation.error


def test_the_run_goes_on_after_all_that(world: World) -> None:
    assert sandbox.evaluate(_job(TINY), timeout_s=60).status is Status.OK
