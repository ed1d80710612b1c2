"""Helpers of the sandbox tests (test_sandbox*.py, test_hostile_*.py): jobs, candidate
sources, process checks. The fixtures (one Sandbox shared by the whole session, ...) are
in sandbox_fixtures.py, which a test module loads with ``pytest_plugins``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from candidates import SMALL_CNN
from lemo_nade.records import EvalJob
from lemo_nade.sandbox.split import PREPARED_MARK

WRONG_SHAPE = SMALL_CNN.replace(
    "return self.head(x.flatten(1))", "return self.head(x.flatten(1))[:, :3]"
)
NET = "\nclass Net:\n    def __init__(self):\n        raise ValueError('stop here')\n"
ENDLESS = "class Net:\n    def __init__(self):\n        while True:\n            pass\n"
MODES = pytest.mark.parametrize("fresh", [False, True], ids=["forkserver", "fresh"])


def job(code: str, epochs: int = 1, **kw: Any) -> EvalJob:
    """A digits job, small batches: what every sandbox test runs."""
    return EvalJob(code=code, dataset="digits", data_dir=None, epochs=epochs, batch_size=64, **kw)


def candidate_dirs(root: Path) -> list[Path]:
    """Candidates' working directories left in ``root`` (the fork server keeps none; the
    sandbox's prepared data stays until it is closed)."""
    return [p for p in root.iterdir() if PREPARED_MARK not in p.name]


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
