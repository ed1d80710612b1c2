"""Size, FLOPs and speed against a hand-counted small conv net and a model family."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lemo_nade.engine import measure
from lemo_nade.engine.worker import run_job
from lemo_nade.records import EvalJob, Status


class Small(nn.Module):
    """1x8x8 -> conv 3x3 (4 ch, pad 1) -> BN -> ReLU -> maxpool 2 -> linear 64 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.head(x.flatten(1))


# conv: 4*1*3*3 weights + 4 biases = 40; BN: 4 weights + 4 biases = 8; head: 64*10 + 10 = 650
SMALL_PARAMS = 40 + 8 + 650
# FLOPs (2 per multiply-add, biases not counted, as torch.utils.flop_counter does):
# conv: 2 * (4 * 8 * 8 outputs) * (1 * 3 * 3 taps) = 4608; head: 2 * 64 * 10 = 1280
SMALL_FLOPS = 4608 + 1280


def mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def test_parameters_and_size_by_hand() -> None:
    model = Small()
    assert measure.parameter_count(model) == SMALL_PARAMS == 698
    assert measure.trainable_parameter_count(model) == SMALL_PARAMS
    model.conv.requires_grad_(False)
    assert measure.trainable_parameter_count(model) == SMALL_PARAMS - 40
    assert measure.parameter_count(model) == SMALL_PARAMS  # frozen ones still count in P
    # float32 parameters and BN running mean/var (4 + 4 floats), num_batches_tracked (int64)
    assert measure.model_size_mb(model) == pytest.approx((698 * 4 + 8 * 4 + 8) / 1e6)
    assert measure.model_size_mb(model.half()) == pytest.approx((698 * 2 + 8 * 2 + 8) / 1e6)


def test_flops_per_image_by_hand() -> None:
    x = torch.randint(0, 17, (5, 1, 8, 8), dtype=torch.uint8)
    flops = measure.flops_per_image(Small(), x, lambda b: b.float() / 16)
    assert flops == SMALL_FLOPS
    # per image: the same whatever the stored set's size
    assert measure.flops_per_image(Small(), x[:1], lambda b: b.float() / 16) == SMALL_FLOPS
    assert math.isnan(measure.flops_per_image(Small(), x[:0]))


def test_flops_of_a_model_that_cannot_run_is_nan() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    assert math.isnan(measure.flops_per_image(Broken(), torch.zeros(1, 3)))


def test_speed_reports_windows_cv_latency_and_threads() -> None:
    before = torch.get_num_threads()
    x = torch.randn(50, 1, 8, 8)
    s = measure.measure_speed(Small(), x, batch=32, windows=4, window_s=0.01, threads=1)
    assert s.fps > 0 and s.fps_batch == 32 and s.fps_windows == 4
    assert math.isfinite(s.fps_cv) and s.fps_cv >= 0
    assert s.latency_samples >= 3
    assert 0 < s.latency_ms_p50 <= s.latency_ms_p95
    assert s.threads == 1 and torch.get_num_threads() == before  # restored
    assert s.seconds >= 4 * 0.01  # the timed windows at least
    # the batch is capped at the set's size
    assert measure.measure_speed(Small(), x[:7], batch=512).fps_batch == 7


def test_speed_budget_follows_training_time() -> None:
    assert measure.speed_budget_s(2.0) == measure.MIN_SPEED_BUDGET_S  # 1 % of 2 s is below
    assert measure.speed_budget_s(30.0) == pytest.approx(0.3)
    assert measure.speed_budget_s(3600.0) == measure.MAX_SPEED_BUDGET_S
    assert measure.speed_budget_s(float("nan")) == measure.MIN_SPEED_BUDGET_S


def test_budget_sets_the_timed_time() -> None:
    x = torch.randn(50, 1, 8, 8)
    short = measure.measure_speed(Small(), x, batch=32, budget_s=0.02, threads=1)
    long = measure.measure_speed(Small(), x, batch=32, budget_s=0.3, threads=1)
    assert short.fps_windows == long.fps_windows == 5
    # the windows run at least their 70 % (latency may stop at max_latency_samples first)
    assert long.seconds >= 0.7 * 0.3 and short.seconds >= 0.7 * 0.02
    assert short.seconds < long.seconds / 3
    assert long.latency_samples > short.latency_samples


def test_latency_sample_limits() -> None:
    x = torch.randn(4, 1, 8, 8)
    capped = measure.measure_speed(Small(), x, 4, latency_budget_s=1e9, max_latency_samples=40)
    assert capped.latency_samples == 40
    # a budget already spent: the 10 x budget cap ends it at 3 samples, whatever the minimum
    stalled = measure.measure_speed(Small(), x, 4, latency_budget_s=0.0, min_latency_samples=25)
    assert stalled.latency_samples == 3


def test_empty_set_measures_nothing() -> None:
    s = measure.measure_speed(Small(), torch.zeros(0, 1, 8, 8), batch=8)
    assert s.fps == 0.0 and math.isnan(s.latency_ms_p50) and s.latency_samples == 0


def test_bigger_model_of_the_family_measures_slower() -> None:
    # ~750x the FLOPs: far outside any noise of a shared machine
    x = torch.randn(256, 1, 8, 8)
    small, big = mlp(16), mlp(1024)
    fast = measure.measure_speed(small, x, batch=256, threads=1)
    slow = measure.measure_speed(big, x, batch=256, threads=1)
    assert slow.fps < fast.fps
    assert slow.latency_ms_p50 > fast.latency_ms_p50
    assert measure.flops_per_image(big, x) > measure.flops_per_image(small, x)


def test_percentile_and_cv_by_hand() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert measure._percentile(values, 0.5) == pytest.approx(2.5)
    assert measure._percentile(values, 0.95) == pytest.approx(3.85)  # 3 + 0.85 * (4 - 3)
    assert math.isnan(measure._percentile([], 0.5))
    # mean 2.5, sample std sqrt(5/3)
    assert measure._cv(values) == pytest.approx(math.sqrt(5 / 3) / 2.5)
    assert math.isnan(measure._cv([1.0]))


SMALL_CODE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.head(x.flatten(1))
"""


@pytest.mark.slow
def test_worker_records_every_measurement() -> None:
    job = EvalJob(code=SMALL_CODE, dataset="digits", data_dir=None, epochs=1, batch_size=64)
    evaluation = run_job(job)
    assert evaluation.status is Status.OK, evaluation.error
    m = evaluation.metrics
    assert m is not None
    assert m.P == m.params_trainable == SMALL_PARAMS
    assert m.flops_per_image == SMALL_FLOPS
    assert m.model_mb == pytest.approx((698 * 4 + 8 * 4 + 8) / 1e6)
    assert m.fps_batch == 64 and m.F > 0 and m.fps_cv >= 0 and m.threads >= 1
    assert 0 < m.latency_ms_p50 <= m.latency_ms_p95
    assert 0 < m.measure_time_s < evaluation.wall_time_s
    # no sensor here (or one): every part is labelled, and the parts add up
    assert set(m.E1_parts) == {"cpu", "ram", "gpu"}
    e1, e2 = m.E1, m.E2
    assert e1 == pytest.approx(sum(m.E1_parts.values()))
    assert e2 == pytest.approx(sum(m.E2_parts.values()))
    assert m.energy_sources.startswith("cpu=") and "gpu=none" in m.energy_sources
    assert m.energy_source in {"estimate", "rapl", "rapl+estimate"}
    # the whole measured span holds training, both passes and the timed speed windows
    assert m.candidate_kwh is not None and m.candidate_kwh >= e1 + e2
    assert m.spent_kwh == m.candidate_kwh


def test_speed_span_covers_the_timed_windows() -> None:
    x = torch.randn(40, 1, 8, 8)
    s = measure.measure_speed(
        Small(), x, batch=8, budget_s=0.02, span=measure.energy_span(10.0, 0.375)
    )
    assert s.fps_energy is not None and s.fps_energy.energy_kwh > 0
    # every timed call ran a full batch of 8; the windows are 70 % of the budget
    assert s.fps_images > 0 and s.fps_images % 8 == 0
    assert 0.014 <= s.fps_energy.wall_s < s.seconds
    assert measure.measure_speed(Small(), x, batch=8).fps_energy is None


def test_e2_from_the_energy_per_image_of_several_passes() -> None:
    from lemo_nade.engine.measuring import _per_image_energy

    a1 = measure.Reading(wall_s=0.01, parts_kwh={"cpu": 2.0, "ram": 1.0, "gpu": 0.0})
    fps = measure.Reading(wall_s=0.01, parts_kwh={"cpu": 1.0, "ram": 0.0, "gpu": 0.0})
    # 150 images cost cpu 3, ram 1; 30 images are a fifth of that
    kwh, parts = _per_image_energy([(a1, 100), (fps, 50)], 30)
    assert parts == pytest.approx({"cpu": 0.6, "ram": 0.2, "gpu": 0.0})
    assert kwh == pytest.approx(0.8)


@pytest.mark.slow
def test_e2_follows_the_model_size() -> None:
    # about 2,000x the FLOPs (a second 256-channel conv): E2, the validation pass's energy,
    # must come out larger even on a loaded machine (16x the channels of a 4-channel conv
    # was inside the timing noise at load average 5)
    wide = SMALL_CODE.replace("Conv2d(1, 4, 3, padding=1)", "Conv2d(1, 256, 3, padding=1)")
    wide = wide.replace("BatchNorm2d(4)", "BatchNorm2d(256)")
    wide = wide.replace(
        "self.head = nn.Linear(4 * 4 * 4",
        "self.mid = nn.Conv2d(256, 256, 3, padding=1)\n        self.head = nn.Linear(256 * 4 * 4",
    )
    wide = wide.replace("self.bn(self.conv(x))", "self.mid(self.bn(self.conv(x)))")
    e2 = {}
    for name, code in (("small", SMALL_CODE), ("wide", wide)):
        job = EvalJob(code=code, dataset="digits", data_dir=None, epochs=1, batch_size=64)
        evaluation = run_job(job)
        assert evaluation.status is Status.OK, evaluation.error
        assert evaluation.metrics is not None
        e2[name] = evaluation.metrics.E2
    assert e2["wide"] > e2["small"] > 0
