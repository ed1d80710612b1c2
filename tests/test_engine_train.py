"""engine.train, engine.measure and the worker's stages, run in this process (no child):
each way a candidate can fail maps to its status, and a good one gets sane metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lemo_nade.engine import measure
from lemo_nade.engine.data import load, make_split
from lemo_nade.engine.train import train
from lemo_nade.engine.worker import load_candidate, main, run_job, short_error
from lemo_nade.records import EvalJob, Evaluation, Status

SMALL_CNN = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.head(x.flatten(1))
"""
# conv: 8*1*3*3 weights + 8 biases; head: 128*10 weights + 10 biases
SMALL_CNN_PARAMS = (8 * 9 + 8) + (128 * 10 + 10)


def _job(code: str, epochs: int = 1, **kw: Any) -> EvalJob:
    kw.setdefault("batch_size", 64)
    return EvalJob(code=code, dataset="digits", data_dir=None, epochs=epochs, **kw)


def _net(init: str = "", forward: str = "return self.head(x.flatten(1))") -> str:
    return (
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        f"        self.head = nn.Linear(64, 10)\n        {init or 'pass'}\n\n"
        f"    def forward(self, x):\n        {forward}\n"
    )


def test_small_cnn_trains_to_sane_metrics() -> None:
    evaluation = run_job(_job(SMALL_CNN, epochs=3))
    assert evaluation.status is Status.OK, evaluation.error
    m = evaluation.metrics
    assert m is not None
    assert m.A2 > 0.5 and 0.5 < m.A1 <= 1.0
    assert m.P == SMALL_CNN_PARAMS == 1370
    assert m.F > 0 and m.E1 > 0 and m.E2 > 0 and m.E1 > m.E2
    assert m.energy_source == "estimate" and m.device == "cpu"
    assert m.epochs_run == 3 and m.train_images + m.val_images == 1438
    assert m.val_images == 143  # round(n_c / 10) per class
    assert math.isfinite(m.train_loss) and math.isfinite(m.val_loss)
    assert m.train_time_s > 0 and m.eval_time_s > 0


def test_same_seed_same_result() -> None:
    first, second = run_job(_job(SMALL_CNN)), run_job(_job(SMALL_CNN))
    assert first.metrics is not None and second.metrics is not None
    assert (first.metrics.A1, first.metrics.A2, first.metrics.val_loss) == (
        second.metrics.A1,
        second.metrics.A2,
        second.metrics.val_loss,
    )


@pytest.mark.parametrize(
    ("code", "status", "needles"),
    [
        (
            _net("raise ValueError('no layers today')"),
            Status.FAILED_BUILD,
            ["no layers today", "line 9"],
        ),
        ("import torch\nclass Model:\n    pass\n", Status.FAILED_BUILD, ["no class Net"]),
        ("import torch\nclass Net:\n    pass\n", Status.FAILED_BUILD, ["torch.nn.Module"]),
        (_net("import missing_module"), Status.FAILED_BUILD, ["ModuleNotFoundError"]),
        (_net("raise MemoryError()"), Status.OOM, ["MemoryError"]),
        (
            _net() + "WEIGHT_DECAY = 'lots'\n",
            Status.FAILED_BUILD,
            ["WEIGHT_DECAY must be a number"],
        ),
        (
            _net(forward="return self.head(x.flatten(1))[:, :5]"),
            Status.FAILED_SHAPE,
            ["[2, 5]", "expected [2, 10]", "[2, 1, 8, 8]"],
        ),
        (_net(forward="return (x.flatten(1), x)"), Status.FAILED_SHAPE, ["is tuple"]),
        (
            _net(forward="return self.head(x)"),
            Status.FAILED_SHAPE,
            ["mat1 and mat2 shapes cannot be multiplied", "candidate.py"],
        ),
        (
            _net(forward="return self.head(x.flatten(1)) * float('nan')"),
            Status.FAILED_NAN,
            ["training loss became nan", "epoch 1, batch 1"],
        ),
        (
            _net(
                forward="if x.shape[0] > 2:\n            raise RuntimeError('train-only bug')\n"
                "        return self.head(x.flatten(1))"
            ),
            Status.FAILED_TRAIN,
            ["train-only bug", "training failed"],
        ),
        (_net(forward="raise SystemExit(3)"), Status.FAILED_SHAPE, ["SystemExit"]),
    ],
)
def test_failures_map_to_statuses(code: str, status: Status, needles: list[str]) -> None:
    evaluation = run_job(_job(code))
    assert evaluation.status is status, evaluation.error
    assert evaluation.metrics is None
    for needle in needles:
        assert needle in evaluation.error
    assert len(evaluation.error.splitlines()) <= 16


def test_plateau_reduces_the_learning_rate() -> None:
    split = make_split(load("digits", None), 0.1, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    # lr so small the validation loss cannot improve by the 1e-4 relative threshold:
    # epoch 1 sets the best, epochs 2 and 3 are bad -> two reductions with patience 0
    job = _job("", epochs=3, lr=1e-12, plateau_patience=0, plateau_factor=0.5)
    result = train(model, split, job)
    assert result.lr == pytest.approx(1e-12 * 0.25)
    assert result.epochs_run == 3 and math.isfinite(result.val_loss)


def test_weight_decay_is_read_from_the_module_constant() -> None:
    evaluation = run_job(_job(_net() + "WEIGHT_DECAY = 0.5\n"))
    assert evaluation.status is Status.OK
    bad = run_job(_job(_net() + "WEIGHT_DECAY = 2.0\n"))
    assert bad.status is Status.FAILED_BUILD and "[0, 1)" in bad.error


def test_accuracy_and_loss_by_hand() -> None:
    x = torch.eye(4) * 2.0
    y = torch.tensor([0, 1, 2, 0])  # the last one is predicted as 3
    accuracy, loss = measure.accuracy_and_loss(nn.Identity(), x, y, batch=3)
    assert accuracy == 0.75
    # each row's softmax: e^2 on the diagonal, 1 elsewhere
    right = -math.log(math.e**2 / (math.e**2 + 3))
    wrong = -math.log(1 / (math.e**2 + 3))
    assert loss == pytest.approx((3 * right + wrong) / 4)
    assert all(math.isnan(v) for v in measure.accuracy_and_loss(nn.Identity(), x[:0], y[:0], 3))


def test_energy_estimate_formula() -> None:
    # 36 CPU-s at 10 W = 360 J; 2 GB at 0.375 W/GB for 100 s = 75 J; 435 J = 435/3.6e6 kWh
    assert measure.estimate_kwh(36.0, 100.0, 2.0, 10.0, 0.375) == pytest.approx(435 / 3.6e6)
    with measure.energy_span(10.0, 0.375) as span:
        sum(i * i for i in range(200_000))
    assert span.cpu_s > 0 and span.wall_s > 0 and span.energy_kwh > 0


def test_fps_runs_at_least_the_minimum_time() -> None:
    model = nn.Linear(4, 2)
    fps = measure.frames_per_second(model, torch.randn(10, 4), batch=4, min_time_s=0.05)
    assert fps > 1000
    assert measure.frames_per_second(model, torch.randn(0, 4), batch=4) == 0.0


def test_short_error_shows_candidate_frames_only() -> None:
    code = "def f():\n    return g()\n\ndef g():\n    raise KeyError('deep')\n"
    namespace = load_candidate(code)
    with pytest.raises(KeyError) as info:
        namespace["f"]()
    text = short_error(info.value)
    assert 'File "candidate.py", line 2, in f' in text and "return g()" in text
    assert "raise KeyError('deep')" in text and text.endswith("KeyError: 'deep'")
    assert "test_engine_train" not in text


def test_worker_main_writes_the_result_file(tmp_path: Path) -> None:
    request, result = tmp_path / "request.json", tmp_path / "result.json"
    request.write_text(json.dumps(_job(_net("raise ValueError('x')")).to_dict()))
    assert main([str(request), str(result)]) == 0
    evaluation = Evaluation.from_dict(json.loads(result.read_text()))
    assert evaluation.status is Status.FAILED_BUILD
    assert {p.name for p in tmp_path.iterdir()} == {"request.json", "result.json"}  # no .tmp left
    assert main([]) == 2


def test_a_trailing_batch_of_one_is_skipped_for_batchnorm() -> None:
    # 1295 training images in batches of 1294 leave one image over; BatchNorm would raise
    code = _net("self.norm = nn.BatchNorm1d(64)", "return self.head(self.norm(x.flatten(1)))")
    evaluation = run_job(_job(code, batch_size=1294))
    assert evaluation.status is Status.OK, evaluation.error
    assert evaluation.metrics is not None and evaluation.metrics.train_images == 1295


def test_augmented_training_runs_and_differs() -> None:
    plain = run_job(_job(SMALL_CNN))
    augmented = run_job(_job(SMALL_CNN, augment=True))
    assert augmented.status is Status.OK and augmented.metrics is not None
    assert plain.metrics is not None and augmented.metrics.A1 != plain.metrics.A1
