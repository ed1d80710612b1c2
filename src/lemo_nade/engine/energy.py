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

What the sensors see: RAPL and NVML count the whole CPU package / GPU, so other processes
on the same machine are included; the estimate counts only this process. ``Reading.note``
says why a sensor was not used (no powercap, or ``energy_uj`` readable by root only, which
is the default since CVE-2020-8694; ``sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj``
or a udev rule lets a user read it).

Counters wrap: RAPL's ``energy_uj`` wraps at ``max_energy_range_uj`` (about 262 kJ, i.e.
every ~40 min at 100 W). A span is read at its start and end and, for long spans, every
``poll_s`` seconds by a daemon thread, and each step adds ``end - start`` or, when the
counter went down, ``max_range - start + end``. One wrap per step is assumed, so
``poll_s`` must be much shorter than the wrap period (the default 10 s is).

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
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

JOULES_PER_KWH = 3.6e6
POWERCAP_ROOT = Path("/sys/class/powercap")
RAM_POWER_W_PER_GB = 0.375  # codecarbon's constant: 3 W per 8 GB
DEFAULT_POLL_S = 10.0
NVML_SAMPLE_S = 0.1
_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")
_SUB_ZONE = re.compile(r"intel-rapl:\d+:\d+")

# Part sources, in the order a combined label lists them.
SOURCE_ORDER = ("nvml", "rapl", "estimate", "unmeasured")


# ---- cumulative counters -------------------------------------------------------------


class Counter(Protocol):
    """A monotonic-with-wraparound energy counter of one device part, in joules."""

    def read_j(self) -> float: ...

    @property
    def wrap_j(self) -> float: ...


class Accumulator:
    """Sums a counter's increments across wraparounds; call :meth:`step` at least once
    per wrap period."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.last = counter.read_j()
        self.total_j = 0.0

    def step(self) -> float:
        now = self.counter.read_j()
        delta = now - self.last
        if delta < 0:  # wrapped
            delta += self.counter.wrap_j
        self.total_j += delta
        self.last = now
        return self.total_j


@dataclass
class RaplZone:
    """One powercap zone: ``energy_uj`` (cumulative µJ) and its wrap range."""

    path: Path
    name: str
    max_range_uj: int

    def read_j(self) -> float:
        return int((self.path / "energy_uj").read_text()) / 1e6

    @property
    def wrap_j(self) -> float:
        return self.max_range_uj / 1e6


@dataclass
class Rapl:
    """The package zones (CPU) and DRAM sub-zones (RAM) of a powercap tree."""

    packages: list[RaplZone]
    dram: list[RaplZone]

    @classmethod
    def open(cls, root: Path = POWERCAP_ROOT) -> tuple[Rapl | None, str]:
        """The readable zones under ``root``, or None and the reason there are none.

        Only ``intel-rapl:N`` zones named ``package-*`` and their ``dram`` sub-zones are
        used: ``core``/``uncore`` sub-zones are inside the package figure, and ``psys``
        (whole platform) would count everything twice.
        """
        if not root.is_dir():
            return None, f"rapl: {root} not present"
        packages: list[RaplZone] = []
        dram: list[RaplZone] = []
        try:
            for path in sorted(root.iterdir()):
                if not (_PACKAGE_ZONE.fullmatch(path.name) or _SUB_ZONE.fullmatch(path.name)):
                    continue
                name = (path / "name").read_text().strip()
                if _PACKAGE_ZONE.fullmatch(path.name) and name.startswith("package"):
                    target = packages
                elif _SUB_ZONE.fullmatch(path.name) and name == "dram":
                    target = dram
                else:
                    continue
                zone = RaplZone(path, name, int((path / "max_energy_range_uj").read_text()))
                zone.read_j()  # PermissionError here when energy_uj is root-only
                target.append(zone)
        except PermissionError as exc:
            return None, (
                f"rapl: {exc.filename} not readable: permission denied (energy_uj is "
                "root-only by default since CVE-2020-8694; allow it with chmod a+r or a "
                "udev rule)"
            )
        except (OSError, ValueError) as exc:
            return None, f"rapl: unreadable powercap zone ({exc})"
        if not packages:
            return None, f"rapl: no package zone under {root}"
        return cls(packages, dram), ""


# ---- NVML ----------------------------------------------------------------------------


class _NvmlCounter:
    """NVML's total-energy counter (mJ since driver load; 64-bit, does not wrap)."""

    wrap_j = 0.0

    def __init__(self, nvml: Any, handle: Any) -> None:
        self.nvml, self.handle = nvml, handle

    def read_j(self) -> float:
        return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)) / 1e3


class _NvmlPowerSampler:
    """Integrates ``nvmlDeviceGetPowerUsage`` (mW) sampled every ``interval_s`` in a
    daemon thread (trapezoid rule); read as a cumulative counter in joules."""

    wrap_j = 0.0

    def __init__(self, nvml: Any, handle: Any, interval_s: float = NVML_SAMPLE_S) -> None:
        self.nvml, self.handle, self.interval_s = nvml, handle, interval_s
        self._lock = threading.Lock()
        self._joules = 0.0
        self._last_t = time.perf_counter()
        self._last_w = self._power_w()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="nvml-power")
        self._thread.start()

    def _power_w(self) -> float:
        return float(self.nvml.nvmlDeviceGetPowerUsage(self.handle)) / 1e3

    def _sample(self) -> None:
        with self._lock:
            t, w = time.perf_counter(), self._power_w()
            self._joules += (t - self._last_t) * (w + self._last_w) / 2
            self._last_t, self._last_w = t, w

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def read_j(self) -> float:
        self._sample()
        with self._lock:
            return self._joules

    def close(self) -> None:
        self._stop.set()


@dataclass
class Nvml:
    """The GPU counter for one CUDA device, from nvidia-ml-py (import name ``pynvml``)."""

    counter: Counter
    method: str  # "energy counter" or "power sampling"

    @classmethod
    def open(cls, device_index: int, uuid: str | None = None) -> tuple[Nvml | None, str]:
        try:
            import pynvml  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return None, "nvml: nvidia-ml-py not installed (pip install 'lemo-nade[gpu]')"
        try:
            pynvml.nvmlInit()
            handle = None
            if uuid:  # CUDA_VISIBLE_DEVICES renumbers devices; NVML does not
                try:
                    handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
                except pynvml.NVMLError:
                    handle = None
            if handle is None:
                handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                return cls(_NvmlCounter(pynvml, handle), "energy counter"), ""
            except pynvml.NVMLError:
                pass  # pre-Volta: no energy counter
            sampler = _NvmlPowerSampler(pynvml, handle)
            return cls(sampler, "power sampling"), "nvml: no energy counter; power sampled"
        except pynvml.NVMLError as exc:
            return None, f"nvml: {exc}"


# ---- what a machine has --------------------------------------------------------------


@dataclass
class Sensors:
    """The sensors of this machine, found once per process by :func:`detect`."""

    rapl: Rapl | None = None
    nvml: Nvml | None = None
    gpu_used: bool = False
    notes: tuple[str, ...] = ()

    def sources(self) -> dict[str, str]:
        """The source of each part: ``cpu``, ``ram``, ``gpu``."""
        gpu = "none"
        if self.gpu_used:
            gpu = "nvml" if self.nvml else "unmeasured"
        return {
            "cpu": "rapl" if self.rapl else "estimate",
            "ram": "rapl" if self.rapl and self.rapl.dram else "estimate",
            "gpu": gpu,
        }


ESTIMATE_ONLY = Sensors(notes=("estimate requested",))


def detect(
    device: Any = None,
    powercap_root: Path = POWERCAP_ROOT,
    nvml_open: Callable[[int, str | None], tuple[Nvml | None, str]] = Nvml.open,
) -> Sensors:
    """Find RAPL (always tried) and NVML (when ``device`` is a CUDA device).

    ``device`` is a ``torch.device`` or None (CPU). Tests point ``powercap_root`` at a
    fake tree and pass their own ``nvml_open``.
    """
    notes: list[str] = []
    rapl, note = Rapl.open(powercap_root)
    if note:
        notes.append(note)
    nvml = None
    gpu_used = getattr(device, "type", None) == "cuda"
    if gpu_used:
        index, uuid = _cuda_index_and_uuid(device)
        nvml, note = nvml_open(index, uuid)
        if note:
            notes.append(note)
    return Sensors(rapl, nvml, gpu_used, tuple(notes))


def _cuda_index_and_uuid(device: Any) -> tuple[int, str | None]:
    import torch

    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    except (RuntimeError, AssertionError):  # no CUDA runtime: NVML's own numbering
        return device.index or 0, None
    text = str(uuid) if uuid is not None else None
    if text and not text.startswith("GPU-"):
        text = "GPU-" + text
    return index, text


# ---- spans ---------------------------------------------------------------------------


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
) -> Iterator[Reading]:
    """Measure the enclosed block; the yielded :class:`Reading` is filled in at the end.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before the end is read, so queued GPU
    work is inside the span. Counters are also stepped every ``poll_s`` s by a daemon
    thread, so long spans survive wraparounds.
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
