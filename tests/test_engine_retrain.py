"""The child's files at the boundary, without a sandbox: the retrain checkpoint and its
progress file, and the result file the run process reads back. Milliseconds each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lemo_nade.engine.retrain import CHECKPOINT, PROGRESS, FileCheckpoint
from lemo_nade.engine.worker import write_result
from lemo_nade.records import Evaluation, Metrics, Status
from lemo_nade.sandbox.outcome import classify, read_result


def _state(epoch: int, val_loss: float) -> dict[str, object]:
    return {
        "epoch": epoch,
        "best_epoch": epoch,
        "model": {"w": torch.arange(4.0)},
        "train_loss": 0.5,
        "val_loss": val_loss,
    }


def test_a_checkpoint_round_trips_and_its_progress_file_is_strict_json(tmp_path: Path) -> None:
    first = FileCheckpoint(tmp_path)
    assert first.load() is None
    first.save(_state(3, float("nan")))
    progress = json.loads((tmp_path / PROGRESS).read_text())  # strict: NaN became null
    assert progress["epoch"] == 3 and progress["val_loss"] is None
    assert progress["train_loss"] == 0.5 and progress["spent_s"] > 0
    again = FileCheckpoint(tmp_path)  # a later session
    loaded = again.load()
    assert loaded is not None and loaded["epoch"] == 3
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    again.save(_state(4, 0.25))
    assert json.loads((tmp_path / PROGRESS).read_text())["spent_s"] >= progress["spent_s"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, PROGRESS]  # no temp left


def test_a_failed_save_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    checkpoint = FileCheckpoint(tmp_path)
    checkpoint.save(_state(2, 0.5))
    broken = {**_state(3, 0.4), "model": {"w": lambda: None}}  # cannot be pickled
    with pytest.raises(Exception):  # noqa: B017 (whatever pickle raises)
        checkpoint.save(broken)
    loaded = FileCheckpoint(tmp_path).load()
    assert loaded is not None and loaded["epoch"] == 2
    assert json.loads((tmp_path / PROGRESS).read_text())["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, PROGRESS]


def test_nan_metrics_cross_the_result_file_as_nan(tmp_path: Path) -> None:
    """The worker writes, the run process classifies: a NaN field stays a float NaN."""
    metrics = Metrics(A1=0.9, A2=0.8, E1=1e-6, E2=1e-7, F=100.0, P=10)
    assert math.isnan(metrics.fps_cv)
    result = tmp_path / "result.json"
    write_result(result, Evaluation(Status.OK, metrics, wall_time_s=1.5))
    back = classify(0, read_result(result), tail="log")
    assert back.status is Status.OK and back.metrics is not None and back.log_tail == "log"
    assert math.isnan(back.metrics.fps_cv) and back.metrics.A2 == 0.8
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
