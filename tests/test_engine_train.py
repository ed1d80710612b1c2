"""engine.train, engine.measure and the worker's stages, run in this process (no child):
each way a candidate can fail maps to its status, and a good one gets sane metrics."""

from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from candidates import SMALL_CNN
from lemo_nade.engine import measure
from lemo_nade.engine.data import Split, make_split
from lemo_nade.engine.loaders import load
from lemo_nade.engine.runtime import runtime_for, tune_cpu_allocator
from lemo_nade.engine.train import (
    TrainingDiverged,
    plateau_scheduler,
    train,
    train_epoch,
    validation_loss,
)
from lemo_nade.engine.worker import load_candidate, main, run_job, short_error
from lemo_nade.records import EvalJob, Evaluation, Status, final_job

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


def test_short_error_names_a_librarys_file_without_this_machines_path() -> None:
    namespace = load_candidate("from torch import nn\n\nclass Net(nn.Module):\n    pass\n")
    with pytest.raises(NotImplementedError) as info:
        namespace["Net"]()(torch.zeros(2, 3))  # no forward: it fails in torch's frames
    text = short_error(info.value)
    assert 'File "torch/nn/modules/module.py", line ' in text, text
    assert str(Path(torch.__file__).parent.parent) not in text  # no site-packages path
    assert text.endswith('is missing the required "forward" function')


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


# ---- protocols, early stopping, precision ----------------------------------------------


def _conflicting_split(n: int = 256, seed: int = 0) -> Split:
    """Validation labels contradict the training labels on the same images, so every
    epoch of training makes the validation loss worse: the first epoch is the best."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    y = x.flatten(1)[:, :4].argmax(dim=1)  # learnable: the brightest of the first 4 pixels
    return Split(x, y, x, (y + 1) % 4, torch.tensor([128.0]), torch.tensor([64.0]), 4)


def test_early_stopping_stops_and_restores_the_best_epoch() -> None:
    split = _conflicting_split()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    lines: list[str] = []
    job = _job("", epochs=50, batch_size=32, lr=0.05, early_stopping_patience=3)
    result = train(model, split, job, log=lines.append)
    assert result.best_epoch == 1 and result.epochs_run == 4 and result.stopped_early
    epoch_losses = [float(line.split("val_loss=")[1].split()[0]) for line in lines[:4]]
    assert epoch_losses == sorted(epoch_losses)  # worse every epoch, as built
    assert lines[-1].startswith("restored the weights of epoch 1")
    # the model now has epoch 1's weights: its validation loss is epoch 1's again
    rt = runtime_for(job, "cpu")
    assert validation_loss(model, split, 32, rt) == pytest.approx(epoch_losses[0], abs=1e-4)
    assert result.val_loss == pytest.approx(epoch_losses[0], abs=1e-4)


def test_without_early_stopping_all_epochs_run() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    result = train(model, _conflicting_split(), _job("", epochs=5, batch_size=32, lr=0.05))
    assert result.epochs_run == 5 and not result.stopped_early and result.best_epoch == 1


def test_final_job_is_the_papers_retrain_on_the_full_data() -> None:
    search = _job(SMALL_CNN, epochs=3, subset_per_class=50, subset_fraction=0.5, augment=True)
    final = final_job(search)
    assert (final.epochs, final.batch_size, final.lr, final.plateau_patience) == (
        500,
        1024,
        0.01,
        20,
    )
    assert final.early_stopping_patience == 40
    assert (final.subset_per_class, final.subset_fraction) == (0, 1.0)  # always all the data
    assert final.code == search.code and final.augment and final.seed == search.seed
    assert final_job(search, epochs=7, early_stopping_patience=0).epochs == 7


def test_runtime_resolution() -> None:
    cpu = runtime_for(_job(""), "cpu")
    assert cpu.amp_dtype is None and not cpu.channels_last  # auto: plain float32 on CPU
    forced = runtime_for(_job("", amp="bf16", channels_last="on"), "cpu")
    assert forced.amp_dtype is torch.bfloat16 and forced.channels_last
    assert runtime_for(_job("", amp="fp16"), "cpu").amp_dtype is torch.float16
    with pytest.raises(ValueError, match="amp must be one of auto, bf16, fp16, off"):
        runtime_for(_job("", amp="fp8"), "cpu")


def test_bf16_channels_last_training_runs_on_cpu() -> None:
    split = make_split(load("digits", None), 0.1, seed=0)
    namespace = load_candidate(SMALL_CNN)
    torch.manual_seed(0)
    model = namespace["Net"]()
    job = _job(SMALL_CNN, epochs=2, amp="bf16", channels_last="on")
    result = train(model, split, job)
    assert math.isfinite(result.train_loss) and math.isfinite(result.val_loss)
    assert result.val_loss < math.log(10)  # better than chance after two epochs
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)


class _NanFrom(nn.Module):
    """Finite for the first ``good`` training batches, NaN after."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)
        self.good, self.calls = good, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        out = self.head(x.flatten(1))
        return out * float("nan") if self.training and self.calls > self.good else out


@pytest.mark.parametrize("every_batch", [True, False])
def test_a_nan_batch_is_named_with_or_without_a_per_batch_check(every_batch: bool) -> None:
    split = make_split(load("digits", None), 0.1, seed=0)
    model = _NanFrom(good=2)
    optimizer = torch.optim.Adam(model.parameters())
    shuffle = torch.Generator().manual_seed(0)
    with pytest.raises(TrainingDiverged, match="became nan at epoch 4, batch 3"):
        train_epoch(model, split, optimizer, 64, shuffle, None, 4, check_every_batch=every_batch)
    # checked per batch, training stops at the bad batch; checked per epoch, it finishes
    assert model.calls == (3 if every_batch else math.ceil(1295 / 64))


def test_deterministic_flag_repeats_and_restores_global_state() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    first = run_job(_job(SMALL_CNN, deterministic=True, augment=True))
    second = run_job(_job(SMALL_CNN, deterministic=True, augment=True))
    assert first.metrics is not None and second.metrics is not None
    assert first.metrics.val_loss == second.metrics.val_loss
    assert torch.are_deterministic_algorithms_enabled() == before


def test_search_subset_trains_on_fewer_images() -> None:
    evaluation = run_job(_job(SMALL_CNN, subset_per_class=30))
    assert evaluation.status is Status.OK and evaluation.metrics is not None
    assert evaluation.metrics.train_images == 300 and evaluation.metrics.val_images == 143


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_allocator_tuning_takes_on_glibc() -> None:
    assert tune_cpu_allocator() is True
    assert tune_cpu_allocator() is True  # once per process; repeat calls are free


def test_search_config_reaches_the_job() -> None:
    from lemo_nade.config import build_config
    from lemo_nade.runs import search_job

    def job_for(**settings: Any) -> EvalJob:
        return search_job(build_config(settings), "code")

    default = job_for()
    assert (default.subset_per_class, default.subset_fraction) == (0, 1.0)
    assert (default.amp, default.channels_last, default.compile) == ("auto", "auto", False)
    assert default.early_stopping_patience == 0 and not default.deterministic
    per_class = job_for(search_subset=200, early_stopping_patience=4, amp="off")
    assert (per_class.subset_per_class, per_class.subset_fraction) == (200, 1.0)
    assert per_class.early_stopping_patience == 4 and per_class.amp == "off"
    fraction = job_for(search_subset=0.25, channels_last="on", compile=True, deterministic=True)
    assert (fraction.subset_per_class, fraction.subset_fraction) == (0, 0.25)
    assert fraction.channels_last == "on" and fraction.compile and fraction.deterministic
    final = final_job(fraction, **build_config().final.model_dump())
    assert (final.epochs, final.batch_size, final.lr, final.subset_fraction) == (
        500,
        1024,
        0.01,
        1.0,
    )


@pytest.mark.parametrize("patience", [5, 20])
def test_lr_drops_after_patience_successive_epochs_without_progress(patience: int) -> None:
    # paper Sec. 4.1: "reduces ... if validation loss doesn't reduce for successive 5 epochs"
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = plateau_scheduler(opt, patience, 0.1)
    scheduler.step(1.0)  # the best so far
    for bad in range(1, patience + 1):
        scheduler.step(1.0)  # no reduction in validation loss
        expected = 1e-3 if bad < patience else 1e-4
        assert opt.param_groups[0]["lr"] == pytest.approx(expected), bad
    # the count starts again: the next drop needs another ``patience`` bad epochs
    for _ in range(patience - 1):
        scheduler.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    scheduler.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)
