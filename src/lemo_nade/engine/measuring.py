"""Measuring a trained model: A1, A2 and E2 (with energy), size, FLOPs and speed.

Used by the measuring process of the search and retrain protocol (on the handed-over
graph) and by the one-process search protocol (``LEMO_NADE_SPLIT=0``). Child side:
imports torch.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lemo_nade.engine import measure
from lemo_nade.engine.data import Split
from lemo_nade.records import EvalJob

MIN_ENERGY_SPAN_S = 0.02  # an E2 span shorter than this is below the counters' resolution


@dataclass(frozen=True)
class Power:
    """What every energy span of one candidate is read with."""

    cpu_w_per_core: float
    ram_w_per_gb: float
    device: torch.device
    sensors: measure.Sensors

    def span(self) -> AbstractContextManager[measure.Reading]:
        return measure.energy_span(
            self.cpu_w_per_core, self.ram_w_per_gb, self.device, self.sensors
        )


def measure_trained(
    model: nn.Module, split: Split, job: EvalJob, power: Power, train_s: float
) -> dict[str, Any]:
    """The trained model's Metrics fields: A1, A2 and E2 (paper Algorithm 1: A1 <-
    Model.eval(train_set); [E2, A2] <- Model.eval(val)), size, FLOPs and speed."""
    with power.span() as e_a1:
        a1, train_loss = measure.accuracy_and_loss(
            model, split.x_train, split.y_train, job.batch_size, split.normalize
        )
    with power.span() as e2:
        a2, val_loss = measure.accuracy_and_loss(
            model, split.x_val, split.y_val, job.batch_size, split.normalize
        )
    start = time.perf_counter()
    flops = measure.flops_per_image(model, split.x_val, split.normalize)
    speed = measure.measure_speed(
        model,
        split.x_val,
        job.batch_size,
        split.normalize,
        budget_s=measure.speed_budget_s(train_s),
        span=power.span(),
    )
    measure_s = time.perf_counter() - start
    e2_kwh, e2_parts = e2.energy_kwh, e2.parts_kwh
    if 0 < e2.wall_s < MIN_ENERGY_SPAN_S:
        passes = [(e_a1, len(split.x_train)), (e2, len(split.x_val))]
        if speed.fps_energy is not None:
            passes.append((speed.fps_energy, speed.fps_images))
        start = time.perf_counter()
        e2_kwh, e2_parts = _resolved_e2(model, split, job, power, passes, e2.wall_s)
        measure_s += time.perf_counter() - start  # any repeat is overhead, counted as such
    return {
        "A1": a1,
        "A2": a2,
        "E2": e2_kwh,
        "E2_parts": e2_parts,
        "F": speed.fps,
        "P": measure.parameter_count(model),
        "params_trainable": measure.trainable_parameter_count(model),
        "model_mb": measure.model_size_mb(model),
        "flops_per_image": flops,
        "fps_batch": speed.fps_batch,
        "fps_cv": speed.fps_cv,
        "latency_ms_p50": speed.latency_ms_p50,
        "latency_ms_p95": speed.latency_ms_p95,
        "threads": speed.threads,
        "measure_time_s": measure_s,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "eval_time_s": e2.wall_s,
        "val_images": len(split.x_val),
    }


def _resolved_e2(
    model: nn.Module,
    split: Split,
    job: EvalJob,
    power: Power,
    passes: list[tuple[measure.Reading, int]],
    val_s: float,
) -> tuple[float, dict[str, float]]:
    """E2 where the validation pass alone is shorter than ``MIN_ENERGY_SPAN_S``, below the
    counters' resolution (other threads' CPU time moves in scheduler ticks).

    Every eval-mode pass of this model at this batch size has the same energy per image:
    ``passes`` holds the A1 pass over the training split, the validation pass and the
    timed FPS windows on validation inputs, with their image counts. E2 = their energy per
    image x validation images. Where even all of them together are too short, the
    validation pass (``val_s`` seconds) is repeated until it is not."""
    if sum(span.wall_s for span, _ in passes) < MIN_ENERGY_SPAN_S:
        repeats = math.ceil(MIN_ENERGY_SPAN_S / max(val_s, 1e-6))
        with power.span() as again:
            for _ in range(repeats):
                measure.accuracy_and_loss(
                    model, split.x_val, split.y_val, job.batch_size, split.normalize
                )
        passes = [(again, repeats * len(split.x_val))]
    return _per_image_energy(passes, len(split.x_val))


def _per_image_energy(
    passes: list[tuple[measure.Reading, int]], images: int
) -> tuple[float, dict[str, float]]:
    """(kWh, kWh by part) of ``images`` images at the energy per image of ``passes``
    (readings with the images each ran)."""
    scale = images / max(1, sum(n for _, n in passes))
    parts: dict[str, float] = {}
    for span, _ in passes:
        for k, v in span.parts_kwh.items():
            parts[k] = parts.get(k, 0.0) + v * scale
    return sum(parts.values()), parts
