"""The energy sensors of this machine: RAPL through Linux powercap (CPU package and DRAM
zones) and NVML (the GPU), read as cumulative counters in joules. Pure at import (torch
only when a CUDA device is asked about). What the readings are used for, and what is
estimated where a sensor is missing, is :mod:`lemo_nade.engine.energy`.

What the sensors see: RAPL and NVML count the whole CPU package / GPU, so other processes
on the same machine are included; the estimate counts only this process. A reading's
``note`` says why a sensor was not used (no powercap, or ``energy_uj`` readable by root only, which
is the default since CVE-2020-8694; ``sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj``
or a udev rule lets a user read it).

Counters wrap: RAPL's ``energy_uj`` wraps at ``max_energy_range_uj`` (about 262 kJ, i.e.
every ~40 min at 100 W). An :class:`Accumulator` adds ``end - start`` per step or, when
the counter went down, ``max_range - start + end``. One wrap per step is assumed, so the
steps (an energy span's ``poll_s``) must be much shorter than the wrap period (the
default 10 s is).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

POWERCAP_ROOT = Path("/sys/class/powercap")
NVML_SAMPLE_S = 0.1
_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")
_SUB_ZONE = re.compile(r"intel-rapl:\d+:\d+")


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


def detect_outside(
    gpu_present: bool,
    visible: str | None = None,
    powercap_root: Path = POWERCAP_ROOT,
    nvml_open: Callable[[int, str | None], tuple[Nvml | None, str]] = Nvml.open,
) -> Sensors:
    """The sensors a parent reads around a child's lifetime, without importing torch:
    RAPL, and NVML for the GPU the child will train on where the machine has one
    (``gpu_present``) and ``CUDA_VISIBLE_DEVICES`` (``visible``) does not hide it all.

    The child's device is the first visible one: a ``GPU-...`` UUID names it exactly; a
    number is NVML's index, the same as CUDA's under ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
    (CUDA's default order may differ on machines with mixed GPUs)."""
    notes: list[str] = []
    rapl, note = Rapl.open(powercap_root)
    if note:
        notes.append(note)
    first = (visible.split(",")[0].strip() if visible is not None else "0") or "-1"
    if not gpu_present or first.startswith("-"):
        return Sensors(rapl, None, False, tuple(notes))
    uuid = first if first.upper().startswith("GPU-") else None
    index = int(first) if first.isdigit() else 0
    nvml, note = nvml_open(index, uuid)
    if note:
        notes.append(note)
    return Sensors(rapl, nvml, True, tuple(notes))


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
