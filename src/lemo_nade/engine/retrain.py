"""The retrain child's extra: checkpoints in its working directory. Runs inside the
candidate's training process (``EvalJob.mode == "retrain"``, phase ``train``), whose
working directory is a new ``retrain/NNN/work/`` per session: the only place it may
write. The run process put a copy of the kept checkpoint there before the child started
and copies ``checkpoint.pt`` and ``progress.json`` out after it ended
(:mod:`lemo_nade.results.retrain`), refusing links and anything not a plain file. The
trained model leaves as the ``model.pt2`` archive of every training child
(:func:`lemo_nade.engine.phases.hand_over`); the test set is measured by the trusted
measuring child, never here.

Checkpoints are ``torch.save`` files written atomically after every epoch and read
with ``weights_only=True`` (tensors, numbers and dicts only; no pickled code). Written
through :func:`lemo_nade.files.atomic_file` (streamed, not built in memory a second time,
which could cross the child's memory limit for a large model) without fsync, as before:
a checkpoint lost to a power cut costs the epochs since the one before it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from lemo_nade.files import atomic_file, atomic_write_json

CHECKPOINT = "checkpoint.pt"
PROGRESS = "progress.json"  # the epoch reached, for the parent's progress bar (no torch)


class FileCheckpoint:
    """``checkpoint.pt`` in ``folder``, replaced atomically.

    It also carries ``spent_s``: the seconds of training up to the checkpoint's epoch,
    summed over every session that trained toward it (time after a session's last
    checkpoint is lost work and not counted), so a resumed retrain reports its whole time.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / CHECKPOINT
        self._session_start = time.monotonic()
        self._before_s = 0.0  # what earlier sessions spent, from the loaded checkpoint

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=True)
        self._before_s = float(state.get("spent_s", 0.0))
        return state

    def save(self, state: dict[str, Any]) -> None:
        spent_s = self._before_s + time.monotonic() - self._session_start
        with atomic_file(self.path, fsync=False) as f:
            torch.save({**state, "spent_s": spent_s}, f)
        progress = {
            "epoch": state["epoch"],
            "best_epoch": state["best_epoch"],
            "train_loss": state["train_loss"],  # NaN becomes null
            "val_loss": state["val_loss"],
            "spent_s": spent_s,
        }
        atomic_write_json(self.path.with_name(PROGRESS), progress, indent=None, fsync=False)
