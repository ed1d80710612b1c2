"""Fixtures of the sandbox tests, loaded with ``pytest_plugins = ["sandbox_fixtures"]``
(a plugin, so that ``box`` is one Sandbox for the whole session, shared by every module
that loads it, as a run shares one for all its candidates). Not imported directly: the
helpers are in sandboxes.py and hostile.py."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostile import KEY, SECRET, World
from lemo_nade import sandbox
from lemo_nade.engine import confine
from lemo_nade.sandbox import Sandbox


@pytest.fixture(scope="session")
def box() -> Iterator[Sandbox]:
    """The session's sandbox: its fork server starts once (seconds: it imports torch)
    and is stopped at the end; a test that kills it gets a new one at the next call."""
    with Sandbox() as shared:
        yield shared


@pytest.fixture(scope="session")
def features(box: Sandbox) -> confine.Features:
    return box.isolation()


class _Lent:
    """``box`` where code opens a Sandbox of its own: closing it does nothing."""

    def __init__(self, box: Sandbox) -> None:
        self._box = box

    def __enter__(self) -> Sandbox:
        return self._box

    def __exit__(self, *exc_info: object) -> None:
        return None

    def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._box, name)


@pytest.fixture(scope="module")
def shared_sandbox(box: Sandbox) -> Iterator[Sandbox]:
    """For a module of whole runs (search, retrain, export, sweeps in this process): every
    Sandbox they open is the session's ``box``, so they do not each start a fork server
    (seconds each; a run owns its own in real use, which test_sandbox*.py checks)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sandbox, "Sandbox", lambda *args, **kwargs: _Lent(box))
        yield box


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sandbox temp dirs go here, so a test can see they were removed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture
def popens(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """The real Popen, remembering what it started."""
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(subprocess, "Popen", spy)
    return started


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, box: Sandbox) -> Iterator[World]:
    """A secret beside the sandbox's temp dirs and a key in the environment; after the
    test, both untouched, no temp dir left, no candidate alive (:class:`hostile.World`)."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    sentinel = outside / "secret.txt"
    sentinel.write_text(SECRET)
    (outside / "sub" / "notes.txt").write_text("untouched")
    sandbox_tmp = tmp_path / "sandbox"
    sandbox_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sandbox_tmp))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    world = World(outside, sentinel, sandbox_tmp, {}, box)
    world.before = world.snapshot()
    yield world
    world.assert_untouched()
