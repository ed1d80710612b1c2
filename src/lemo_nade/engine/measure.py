"""What a trained candidate measures: parameters, accuracy/loss, FPS and an energy estimate.

Energy here is an ESTIMATE, not a measurement (``energy_source = "estimate"``)::

    joules = cpu_s * cpu_power_w_per_core + rss_gb * ram_power_w_per_gb * wall_s
    kwh    = joules / 3.6e6

``cpu_s`` is this process's CPU time over the span (``time.process_time``: user + system,
all threads), so it scales with the cores actually kept busy. The defaults come from
:class:`lemo_nade.records.EvalJob`: 10 W per busy core (a rough server-core figure; set
your own TDP / cores) and codecarbon's 0.375 W per GB of RAM. RSS is sampled at the end
of the span. On a GPU only the host side is counted: GPU power (NVML) is not read here,
so GPU runs are underestimated. Compare candidates of one run with each other, not with
a wall-power meter.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

JOULES_PER_KWH = 3.6e6
Transform = Callable[[torch.Tensor], torch.Tensor]


def parameter_count(model: nn.Module) -> int:
    """All parameters, trainable or frozen; buffers (BatchNorm running stats) are not counted."""
    return sum(p.numel() for p in model.parameters())


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


def frames_per_second(
    model: nn.Module,
    x: torch.Tensor,
    batch: int,
    transform: Transform | None = None,
    min_time_s: float = 0.2,
) -> float:
    """Images per second of inference (eval mode, batches of ``batch``) on ``x``.

    Inputs are prepared before timing, so this is the model's speed, not the
    normalisation's. One warm-up batch, then whole batches cycled over ``x`` until at
    least ``min_time_s`` has passed (at least one batch). 0.0 for an empty set.
    """
    if len(x) == 0:
        return 0.0
    model.eval()
    inputs = [transform(b) if transform else b for b in x.split(max(1, batch))]
    images = 0
    with torch.inference_mode():
        model(inputs[0])
        _sync(x.device)
        start = time.perf_counter()
        elapsed = 0.0
        while elapsed < min_time_s:
            for xb in inputs:
                model(xb)
                images += len(xb)
                _sync(x.device)
                elapsed = time.perf_counter() - start
                if elapsed >= min_time_s:
                    break
    return images / max(elapsed, 1e-9)


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
    """The estimate formula in the module docstring."""
    joules = cpu_s * cpu_power_w_per_core + rss_gb * ram_power_w_per_gb * wall_s
    return joules / JOULES_PER_KWH


def rss_gb() -> float:
    """Current resident memory of this process (Linux ``/proc``), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 1e9
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


@dataclass
class Span:
    """Filled in when an :func:`energy_span` block ends."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    energy_kwh: float = 0.0


@contextmanager
def energy_span(
    cpu_power_w_per_core: float, ram_power_w_per_gb: float, device: torch.device | None = None
) -> Iterator[Span]:
    """Estimate the energy of the enclosed block (see the module docstring)."""
    span = Span()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        yield span
    finally:
        if device is not None:
            _sync(device)
        span.wall_s = time.perf_counter() - wall0
        span.cpu_s = time.process_time() - cpu0
        span.energy_kwh = estimate_kwh(
            span.cpu_s, span.wall_s, rss_gb(), cpu_power_w_per_core, ram_power_w_per_gb
        )
