"""Hostile candidates that reach for the network or get past the policy through torch
internals: each is contained at run time, ends as a failed candidate, and changes nothing
outside the sandbox's temporary directory (the two layers and the ``world``: hostile.py)."""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

import pytest

from hostile import NET, SECRET, World, needs, run_hostile, saw
from lemo_nade.engine import confine

pytest_plugins = ["sandbox_fixtures"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


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
        seen = saw(run_hostile(world, code + NET))
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
        seen = saw(run_hostile(world, code + NET))
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
            seen = saw(run_hostile(world, code + NET))
            with pytest.raises(BlockingIOError):
                agent.accept()
        finally:
            path.unlink()
            path.parent.rmdir()
    assert seen.strip() == "PermissionError"


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
    seen = saw(run_hostile(world, code + NET))
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
    seen = saw(run_hostile(world, code + NET))
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
    seen = saw(run_hostile(world, code + NET))
    assert seen.strip().startswith("PermissionError") and SECRET not in seen
