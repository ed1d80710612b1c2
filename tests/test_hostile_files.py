"""Hostile candidates that go after files, secrets and the result channel: each ends as a
failed candidate with a specific status, and nothing outside the sandbox's temporary
directory changes (the two layers and the ``world`` fixture: hostile.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from hostile import KEY, NET, SECRET, TINY, World, needs, run_hostile, saw
from lemo_nade.engine import confine
from lemo_nade.records import Status
from lemo_nade.sandbox import Sandbox
from sandboxes import job

pytest_plugins = ["sandbox_fixtures"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


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
    seen = saw(run_hostile(world, code + NET))
    assert seen.strip() == "'PermissionError'"
    assert SECRET not in seen and KEY not in seen


def test_the_environment_has_no_keys(world: World) -> None:
    code = "import os\nraise RuntimeError(f'SEEN {dict(os.environ)!r}')\n"
    with Sandbox() as own:  # a fork server started now, with the key in our environment
        seen = saw(run_hostile(replace(world, box=own), code + NET))
        assert own.server_pid() is not None  # the candidate ran through that server
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
        seen = saw(run_hostile(world, code + NET))
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
    seen = saw(run_hostile(world, code + NET))
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
        seen = saw(run_hostile(world, code + NET))
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
    assert "wrote" in saw(run_hostile(world, code + NET))


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
    assert "real ending" in saw(run_hostile(world, code + NET))
    assert world.box.evaluate(job(TINY), 60).status is Status.OK  # server not confused


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
