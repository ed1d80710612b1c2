"""Energy of a span of work: read from sensors where the machine has them, else estimated.

Each part of E1/E2 carries its own source, and every figure built from them is labelled:

=====  ============================================  ===========================================
part   measured (source)                             otherwise (source)
=====  ============================================  ===========================================
cpu    RAPL package zones through Linux powercap     ``estimate``: this process's CPU time x a
       (``/sys/class/powercap/intel-rapl:N``;        documented power per busy core
       AMD Zen exposes the same interface): ``rapl``  (``cpu_power_w_per_core``, default 10 W)
ram    RAPL ``dram`` sub-zones, where the platform   ``estimate``: resident memory (RSS) x
       has them: ``rapl``                            0.375 W/GB (codecarbon's 3 W per 8 GB) x
                                                     wall time
gpu    NVML's total-energy counter (Volta and        ``unmeasured`` when a GPU is used but
       newer), else NVML power sampled every         nvidia-ml-py is missing (``pip install
       0.1 s and integrated: ``nvml``                lemo-nade[gpu]``); ``none`` on CPU runs
=====  ============================================  ===========================================

The sensors themselves (what they count, who may read them, wraparound) are
:mod:`lemo_nade.engine.sensors`; this module turns their counters, or the estimate, into
a :class:`Reading` per span. A span is read at its start and end and, for long spans,
every ``poll_s`` seconds by a daemon thread, so counters that wrap are stepped in time.

Why not codecarbon (evaluated: 3.3.2, ``OfflineEmissionsTracker``, ``tracking_mode=
"process"``, measured on this project's shared 2-core CPU box, no RAPL, load ~3):

- it installs cleanly, but adds 11 packages (pandas, arrow, rapidfuzz, questionary, ...);
- in a fresh process its first ``start()`` blocks on hardware set-up: 1.31-1.41 s wall,
  0.31-0.43 s CPU (5 processes), i.e. ~45 % of a 3 s digits candidate;
- forked from a process that already ran it once (as a fork server could arrange),
  constructor + start + stop costs 11-34 ms wall, median 11.8 ms (9.7 ms CPU; 10 forks):
  ~0.8 % of a 3 s candidate for the two spans E1, E2, inside the 2 % bar, but 10-60 % of
  an E2 span itself (20-100 ms on digits), which it would inflate, and it needs
  threads in the fork server, which that server avoids so that forking stays safe;
- it reads the same RAPL files and NVML calls as this module, and without them it falls
  back to its own estimate (a CPU TDP table), so it measures nothing extra.

So the sensors are read directly: an energy span costs ~40 µs (estimate) to ~0.7 ms
(3 RAPL zones, with the poll thread); ``bench/measure.py`` prints both.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from lemo_nade.engine.sensors import Accumulator, Sensors

JOULES_PER_KWH = 3.6e6
RAM_POWER_W_PER_GB = 0.375  # codecarbon's constant: 3 W per 8 GB
DEFAULT_POLL_S = 10.0

# Part sources, in the order a combined label lists them.
SOURCE_ORDER = ("nvml", "rapl", "estimate", "unmeasured")


@dataclass
class Reading:
    """Energy of one span, by part, in kWh (device energy: no PUE)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time (user + system, all threads)
    rss_gb: float = 0.0  # at the end of the span
    parts_kwh: dict[str, float] = field(
        default_factory=lambda: {"cpu": 0.0, "ram": 0.0, "gpu": 0.0}
    )
    sources: dict[str, str] = field(
        default_factory=lambda: {"cpu": "estimate", "ram": "estimate", "gpu": "none"}
    )
    note: str = ""

    @property
    def energy_kwh(self) -> float:
        return sum(self.parts_kwh.values())

    @property
    def source(self) -> str:
        """One label for the total, e.g. ``estimate``, ``rapl``, ``nvml+estimate``."""
        return combined_source(self.sources)

    def sources_text(self) -> str:
        return ",".join(f"{part}={src}" for part, src in self.sources.items())


def combined_source(sources: dict[str, str]) -> str:
    used = {s for s in sources.values() if s != "none"}
    return "+".join(s for s in SOURCE_ORDER if s in used) or "none"


def estimate_joules(
    cpu_s: float, wall_s: float, rss_gb: float, cpu_power_w_per_core: float, ram_w_per_gb: float
) -> tuple[float, float]:
    """(cpu J, ram J) of the estimate: ``cpu_s x W/core`` and ``rss_gb x W/GB x wall_s``."""
    return cpu_s * cpu_power_w_per_core, rss_gb * ram_w_per_gb * wall_s


def rss_gb() -> float:
    """Current resident memory of this process (Linux ``/proc``), else its peak."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


@contextmanager
def span(
    sensors: Sensors,
    cpu_power_w_per_core: float,
    ram_power_w_per_gb: float = RAM_POWER_W_PER_GB,
    sync: Callable[[], None] | None = None,
    poll_s: float = DEFAULT_POLL_S,
    usage: Callable[[], tuple[float, float]] | None = None,
) -> Iterator[Reading]:
    """Measure the enclosed block; the yielded :class:`Reading` is filled in at the end.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before the end is read, so queued GPU
    work is inside the span. Counters are also stepped every ``poll_s`` s by a daemon
    thread, so long spans survive wraparounds. ``usage`` (CPU seconds, peak RSS in GB)
    replaces this process's own figures in the estimate (a child measured from outside).
    """
    reading = Reading(sources=sensors.sources(), note="; ".join(sensors.notes))
    accumulators: dict[str, list[Accumulator]] = {"cpu": [], "ram": [], "gpu": []}
    if sensors.rapl:
        accumulators["cpu"] = [Accumulator(z) for z in sensors.rapl.packages]
        accumulators["ram"] = [Accumulator(z) for z in sensors.rapl.dram]
    if sensors.nvml:
        accumulators["gpu"] = [Accumulator(sensors.nvml.counter)]
    every = [a for group in accumulators.values() for a in group]
    lock = threading.Lock()

    def step_all() -> None:
        with lock:
            for acc in every:
                acc.step()

    stop = threading.Event()
    poller = None
    if every:
        poller = threading.Thread(target=_poll, args=(stop, poll_s, step_all), daemon=True)
        poller.start()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        yield reading
    finally:
        if sync is not None:
            sync()
        reading.wall_s = time.perf_counter() - wall0
        reading.cpu_s = time.process_time() - cpu0
        stop.set()
        if poller is not None:
            poller.join()
        step_all()
        reading.rss_gb = rss_gb()
        if usage is not None:
            reading.cpu_s, reading.rss_gb = usage()
        cpu_j, ram_j = estimate_joules(
            reading.cpu_s, reading.wall_s, reading.rss_gb, cpu_power_w_per_core, ram_power_w_per_gb
        )
        measured = {part: sum(a.total_j for a in group) for part, group in accumulators.items()}
        joules = {
            "cpu": measured["cpu"] if reading.sources["cpu"] == "rapl" else cpu_j,
            "ram": measured["ram"] if reading.sources["ram"] == "rapl" else ram_j,
            "gpu": measured["gpu"],
        }
        reading.parts_kwh = {part: j / JOULES_PER_KWH for part, j in joules.items()}


def _poll(stop: threading.Event, every_s: float, step: Callable[[], None]) -> None:
    while not stop.wait(every_s):
        try:
            step()
        except (OSError, ValueError):  # a failed read: the next step covers the interval
            continue
