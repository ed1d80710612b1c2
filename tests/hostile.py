"""Helpers of the hostile suite (test_hostile_*.py): the world a hostile candidate must
leave untouched, running one, and reading what it saw.

Two layers are tested. Policy cases go through :meth:`Sandbox.evaluate` and must be
rejected before any process starts. Runtime cases pass ``check_policy=False``, as if the
policy had missed them: the kernel isolation (namespaces, Landlock, seccomp, rlimits)
must contain them. A runtime case that needs a mechanism this machine lacks is skipped,
and says which (see ``Sandbox.isolation()``).

The ``world`` fixture (sandbox_fixtures.py) puts a secret file in a directory beside the
sandbox's temp dirs and a fake API key in this process's environment, and after every
test checks that the directory is byte-for-byte unchanged, that no sandbox temp dir is
left, and that no candidate process is alive.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from lemo_nade.engine import confine
from lemo_nade.records import Evaluation, Status
from lemo_nade.sandbox import Sandbox
from lemo_nade.sandbox.split import PREPARED_MARK
from proctools import eventually, live_candidates
from sandboxes import job

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
    box: Sandbox  # what the candidates run in

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
        assert self.sentinel.read_text() == SECRET, "the secret file changed"
        left = [p.name for p in self.sandbox_tmp.iterdir() if PREPARED_MARK not in p.name]
        assert left == [], "a sandbox temp dir was left behind"  # (data stays till close)
        assert eventually(lambda: live_candidates() == []), "a candidate process outlived it"


def needs(features: confine.Features, *, landlock: int = 0, namespaces: bool = False,
          seccomp: bool = False) -> None:  # fmt: skip
    if landlock and features.landlock_abi < landlock:
        pytest.skip(f"needs Landlock ABI {landlock}+ (this machine: {features.landlock_abi})")
    if namespaces and not features.namespaces:
        pytest.skip("needs unprivileged user/PID/network namespaces")
    if seccomp and not features.seccomp:
        pytest.skip("needs seccomp")


def run_hostile(
    world: World,
    code: str,
    *,
    policy: bool = False,
    timeout_s: float = 30,
    memory_limit_mb: int | None = None,
) -> Evaluation:
    """Run ``code`` (through the policy, or around it) and check the world is untouched."""
    evaluation = world.box.evaluate(job(code), timeout_s, memory_limit_mb, check_policy=policy)
    world.assert_untouched()
    return evaluation


def saw(evaluation: Evaluation) -> str:
    """What a reporting candidate saw: the text of its final exception."""
    assert evaluation.status is Status.FAILED_BUILD, evaluation.error + evaluation.log_tail
    last = evaluation.error.splitlines()[-1]
    assert last.startswith("RuntimeError: SEEN "), evaluation.error
    return last.removeprefix("RuntimeError: SEEN ")
