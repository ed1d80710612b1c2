"""What a trained candidate measures: size, FLOPs, accuracy/loss, speed and energy.

Size: ``parameter_count`` (all parameters, the paper's P), ``trainable_parameter_count``,
``model_size_mb`` (parameters + buffers, bytes / 1e6).

FLOPs: :func:`flops_per_image` runs one image forward under ``torch.utils.flop_counter``.
It counts what that counter has formulas for: convolutions, matrix products and attention,
2 FLOPs per multiply-add, biases not included. Element-wise ops, normalisation and pooling
count 0, so this is a lower bound close to the total for conv/linear nets.

Speed: :func:`measure_speed`, in ``torch.inference_mode`` and eval mode, at a fixed
thread count (the worker's; recorded), with the GPU synchronised at every timing point:

- throughput (FPS) at the evaluation batch size on one prepared batch of real inputs
  (normalisation is done before timing): ``warmup`` untimed calls, then ``windows``
  time-boxed windows: each runs calls until ``window_s`` has passed (at least one call).
  FPS is the median over windows; ``fps_cv`` (sample standard deviation / mean over
  windows) is recorded with it;
- batch-1 latency: warm-up, then single-image calls timed one by one until
  ``latency_budget_s`` has passed and at least ``min_latency_samples`` were taken
  (capped at 10 x the budget once 3 were taken); p50 and p95 in ms (linear
  interpolation between order statistics).

How long it measures follows the candidate's cost: the worker passes
``budget_s = speed_budget_s(training seconds)``, 1 % of the training time, at least
``MIN_SPEED_BUDGET_S`` (20 ms) and at most ``MAX_SPEED_BUDGET_S`` (1 s). 70 % of the
budget goes to the 5 FPS windows, 30 % to latency. A candidate that trains in 2 s is
measured in ~30 ms with the warm-ups (the measuring must stay under 3 % of a candidate;
``bench/measure.py`` reports both the stability and the overhead); one that trains for
minutes gets 1 s and steadier figures. A window is never shorter than one call, so for
big models the time grows with the call time. On a shared machine the FPS moves with the
neighbours' load (over seconds) much more than with the window length: read ``fps_cv``
next to F.

Energy: :mod:`lemo_nade.engine.energy` (RAPL / NVML where readable, see
:mod:`lemo_nade.engine.sensors`; else a labelled estimate). :func:`energy_span` is the
worker's entry point.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lemo_nade.engine import energy
from lemo_nade.engine.energy import JOULES_PER_KWH, Reading, rss_gb
from lemo_nade.engine.sensors import Sensors, detect

__all__ = [
    "JOULES_PER_KWH",
    "Reading",
    "Sensors",
    "Speed",
    "accuracy_and_loss",
    "energy_span",
    "estimate_kwh",
    "flops_per_image",
    "frames_per_second",
    "measure_speed",
    "model_size_mb",
    "parameter_count",
    "rss_gb",
    "sensors_for",
    "speed_budget_s",
    "trainable_parameter_count",
]

Transform = Callable[[torch.Tensor], torch.Tensor]

MIN_SPEED_BUDGET_S = 0.02  # timed seconds of a speed measurement, at least
MAX_SPEED_BUDGET_S = 1.0  # and at most
SPEED_SHARE = 0.01  # of the candidate's training time
LATENCY_SHARE = 0.3  # of a speed budget that goes to batch-1 latency; the rest to FPS


# ---- size and compute ----------------------------------------------------------------


def parameter_count(model: nn.Module) -> int:
    """All parameters, trainable or frozen; buffers (BatchNorm running stats) are not counted."""
    return sum(p.numel() for p in model.parameters())


def trainable_parameter_count(model: nn.Module) -> int:
    """Parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_size_mb(model: nn.Module) -> float:
    """Bytes of parameters and buffers (as stored: their own dtypes) / 1e6."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def flops_per_image(model: nn.Module, x: torch.Tensor, transform: Transform | None = None) -> float:
    """Forward FLOPs for one image, as ``torch.utils.flop_counter`` counts them (see the
    module docstring); ``x`` holds at least one stored image. NaN when the set is empty or
    the counter cannot run the model (the figure is informative, not a reason to fail)."""
    from torch.utils.flop_counter import FlopCounterMode

    if len(x) == 0:
        return float("nan")
    model.eval()
    xb = transform(x[:1]) if transform else x[:1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the count does not depend on it; a 1-image pass is faster
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(xb)
    except Exception:  # the candidate's forward under a dispatch mode; never fatal here
        return float("nan")
    finally:
        torch.set_num_threads(threads)
    return float(counter.get_total_flops())


# ---- accuracy ------------------------------------------------------------------------


def accuracy_and_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    transform: Transform | None = None,
) -> tuple[float, float]:
    """(accuracy 0..1, mean cross-entropy) in eval mode; NaNs for an empty set.

    ``transform`` maps a stored batch (uint8) to model input (normalised float).
    The model is left in eval mode.
    """
    if len(x) == 0:
        return float("nan"), float("nan")
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=y.device)
    with torch.inference_mode():
        for start in range(0, len(x), max(1, batch)):
            xb = x[start : start + batch]
            yb = y[start : start + batch]
            logits = model(transform(xb) if transform else xb)
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
            correct += (logits.argmax(dim=1) == yb).sum()
    return correct.item() / len(x), loss_sum.item() / len(x)


# ---- speed ---------------------------------------------------------------------------


def speed_budget_s(train_s: float) -> float:
    """Timed seconds for :func:`measure_speed` after ``train_s`` seconds of training:
    ``SPEED_SHARE`` of it, clamped to [``MIN_SPEED_BUDGET_S``, ``MAX_SPEED_BUDGET_S``]."""
    share = SPEED_SHARE * train_s if math.isfinite(train_s) else 0.0
    return min(MAX_SPEED_BUDGET_S, max(MIN_SPEED_BUDGET_S, share))


@dataclass(frozen=True)
class Speed:
    """Inference speed; see the module docstring for how each figure is taken."""

    fps: float = 0.0  # median over windows, images/s at batch ``fps_batch``
    fps_cv: float = float("nan")  # sample std / mean of the windows' FPS
    fps_batch: int = 0
    fps_windows: int = 0
    latency_ms_p50: float = float("nan")  # batch 1
    latency_ms_p95: float = float("nan")
    latency_samples: int = 0
    threads: int = 0  # torch intra-op threads during the measurement
    seconds: float = 0.0  # wall time the whole measurement took (its overhead)
    fps_images: int = 0  # images run in the timed FPS windows
    fps_energy: Reading | None = None  # their energy, when a span was given


def measure_speed(
    model: nn.Module,
    x: torch.Tensor,
    batch: int,
    transform: Transform | None = None,
    *,
    budget_s: float | None = None,
    windows: int = 5,
    window_s: float = 0.006,
    warmup: int = 1,
    latency_budget_s: float = 0.01,
    min_latency_samples: int = 10,
    max_latency_samples: int = 1000,
    threads: int | None = None,
    span: AbstractContextManager[Reading] | None = None,
) -> Speed:
    """Throughput at ``batch`` and batch-1 latency of ``model`` on inputs from ``x``.

    ``budget_s`` (see :func:`speed_budget_s`), when given, sets the timed time:
    ``LATENCY_SHARE`` of it for latency, the rest split over the ``windows``; it replaces
    ``window_s`` and ``latency_budget_s``. ``threads`` sets torch's intra-op thread count
    for the measurement (restored after); None keeps the current one. ``span`` (an
    :func:`energy_span`) is entered around the timed FPS windows only; its reading comes
    back as ``Speed.fps_energy`` with ``fps_images``. An empty ``x`` gives ``Speed()``.
    """
    if len(x) == 0:
        return Speed()
    if budget_s is not None:
        latency_budget_s = LATENCY_SHARE * budget_s
        window_s = (budget_s - latency_budget_s) / max(1, windows)
    start = time.perf_counter()
    with _torch_threads(threads):
        model.eval()
        bsz = max(1, min(batch, len(x)))
        with torch.inference_mode():
            xb = transform(x[:bsz]) if transform else x[:bsz]
            x1 = transform(x[:1]) if transform else x[:1]
            _warm_up(model, xb, warmup)
            fps_span: AbstractContextManager[Reading | None] = span or nullcontext()
            with fps_span as fps_energy:
                per_window, fps_images = _throughput(model, xb, windows, window_s)
            lat = sorted(
                _latency(
                    model, x1, warmup, latency_budget_s, min_latency_samples, max_latency_samples
                )
            )
        used_threads = torch.get_num_threads()
    return Speed(
        fps=statistics.median(per_window),
        fps_cv=_cv(per_window),
        fps_batch=bsz,
        fps_windows=len(per_window),
        latency_ms_p50=_percentile(lat, 0.50) * 1e3,
        latency_ms_p95=_percentile(lat, 0.95) * 1e3,
        latency_samples=len(lat),
        threads=used_threads,
        seconds=time.perf_counter() - start,
        fps_images=fps_images,
        fps_energy=fps_energy,
    )


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads at ``threads`` (None, 0: as they are), restored after."""
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)


def frames_per_second(
    model: nn.Module,
    x: torch.Tensor,
    batch: int,
    transform: Transform | None = None,
    min_time_s: float = 0.2,
) -> float:
    """Median throughput (images/s) at ``batch`` over 5 windows of ``min_time_s / 5``
    each (so at least ``min_time_s`` of timed inference); 0.0 for an empty set."""
    if len(x) == 0:
        return 0.0
    model.eval()
    bsz = max(1, min(batch, len(x)))
    with torch.inference_mode():
        xb = transform(x[:bsz]) if transform else x[:bsz]
        _warm_up(model, xb, 1)
        return statistics.median(_throughput(model, xb, 5, min_time_s / 5)[0])


def _warm_up(model: nn.Module, xb: torch.Tensor, calls: int) -> None:
    for _ in range(max(1, calls)):
        model(xb)
    _sync(xb.device)


def _throughput(
    model: nn.Module, xb: torch.Tensor, windows: int, window_s: float
) -> tuple[list[float], int]:
    """(images/s of each of ``windows`` time-boxed windows of calls on ``xb``, images
    run): a window ends at the first call that finishes after ``window_s`` (so it holds
    at least one). The caller warms up first."""
    device = xb.device
    out = []
    images = 0
    for _ in range(max(1, windows)):
        calls = 0
        t0 = time.perf_counter()
        while True:
            model(xb)
            _sync(device)  # per call: the clock must see the GPU's work, not its queue
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= window_s:
                break
        out.append(calls * len(xb) / max(elapsed, 1e-9))
        images += calls * len(xb)
    return out, images


def _latency(
    model: nn.Module,
    x1: torch.Tensor,
    warmup: int,
    budget_s: float,
    min_samples: int,
    max_samples: int,
) -> list[float]:
    """Seconds per batch-1 call, each synchronised. Calls go on until ``budget_s`` has
    passed and ``min_samples`` were taken, but stop at 10 x ``budget_s`` once 3 were
    taken, so a stalled machine cannot stretch the measurement much."""
    device = x1.device
    for _ in range(max(1, warmup)):
        model(x1)
    _sync(device)
    samples: list[float] = []
    begin = time.perf_counter()
    while len(samples) < max_samples:
        spent = time.perf_counter() - begin
        if spent >= budget_s and len(samples) >= min_samples:
            break
        if spent >= 10 * budget_s and len(samples) >= 3:
            break
        t0 = time.perf_counter()
        model(x1)
        _sync(device)
        samples.append(time.perf_counter() - t0)
    return samples


def _cv(values: list[float]) -> float:
    if len(values) < 2:
        return float("nan")
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else float("nan")


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- energy --------------------------------------------------------------------------


def estimate_kwh(
    cpu_s: float,
    wall_s: float,
    rss_gb: float,
    cpu_power_w_per_core: float,
    ram_power_w_per_gb: float,
) -> float:
    """The estimate (see :mod:`lemo_nade.engine.energy`): CPU-s x W/core + GB x W/GB x s."""
    cpu_j, ram_j = energy.estimate_joules(
        cpu_s, wall_s, rss_gb, cpu_power_w_per_core, ram_power_w_per_gb
    )
    return (cpu_j + ram_j) / JOULES_PER_KWH


@functools.lru_cache(maxsize=8)
def _sensors_cached(device_text: str) -> Sensors:
    return detect(torch.device(device_text))


def sensors_for(device: torch.device | None) -> Sensors:
    """This machine's sensors for ``device``, found once per process."""
    return _sensors_cached(str(device) if device is not None else "cpu")


@contextmanager
def energy_span(
    cpu_power_w_per_core: float,
    ram_power_w_per_gb: float,
    device: torch.device | None = None,
    sensors: Sensors | None = None,
) -> Iterator[Reading]:
    """Energy of the enclosed block by part, with sources (:func:`energy.span`).

    ``sensors`` defaults to what this machine has (:func:`sensors_for`); pass
    ``lemo_nade.engine.sensors.ESTIMATE_ONLY`` to force the estimate.
    """
    found = sensors if sensors is not None else sensors_for(device)
    sync = (lambda: _sync(device)) if device is not None else None
    with energy.span(found, cpu_power_w_per_core, ram_power_w_per_gb, sync=sync) as reading:
        yield reading
