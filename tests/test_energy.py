"""Energy sensors against fake powercap trees and a fake NVML: wraparound, several
packages, unreadable files, fallbacks and labels."""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from lemo_nade.engine import energy, measure
from lemo_nade.engine import sensors as sensors_module
from lemo_nade.engine.energy import combined_source
from lemo_nade.engine.sensors import (
    ESTIMATE_ONLY,
    Accumulator,
    Nvml,
    Rapl,
    RaplZone,
    Sensors,
    detect,
)
from lemo_nade.records import Metrics

MAX_UJ = 1_000_000_000  # a 1 kJ wrap range keeps the numbers readable


def zone(root: Path, name: str, label: str, energy_uj: int, max_uj: int = MAX_UJ) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "name").write_text(label + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def set_uj(path: Path, value: int) -> None:
    """Atomic, like a sysfs read: the poll thread never sees a half-written file."""
    tmp = path / "energy_uj.tmp"
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path / "energy_uj")


@pytest.fixture
def powercap(tmp_path: Path) -> dict[str, Path]:
    """Two packages, one DRAM sub-zone, a core sub-zone and a psys zone (both ignored)."""
    root = tmp_path / "powercap"
    return {
        "root": root,
        "pkg0": zone(root, "intel-rapl:0", "package-0", 5_000_000),
        "pkg1": zone(root, "intel-rapl:1", "package-1", 7_000_000),
        "dram": zone(root, "intel-rapl:0:1", "dram", 1_000_000),
        "core": zone(root, "intel-rapl:0:0", "core", 3_000_000),
        "psys": zone(root, "intel-rapl:2", "psys", 9_000_000),
    }


def test_rapl_finds_packages_and_dram_only(powercap: dict[str, Path]) -> None:
    rapl, note = Rapl.open(powercap["root"])
    assert rapl is not None and note == ""
    assert [z.name for z in rapl.packages] == ["package-0", "package-1"]
    assert [z.name for z in rapl.dram] == ["dram"]
    sensors = detect(None, powercap_root=powercap["root"])
    assert sensors.sources() == {"cpu": "rapl", "ram": "rapl", "gpu": "none"}


def test_rapl_span_sums_packages_and_handles_wraparound(powercap: dict[str, Path]) -> None:
    sensors = detect(None, powercap_root=powercap["root"])
    with energy.span(sensors, cpu_power_w_per_core=10.0) as reading:
        set_uj(powercap["pkg0"], 35_000_000)  # +30 J
        # package 1 wraps: 7 J -> 1 kJ range -> 2 J, i.e. (1000 - 7) + 2 = 995 J
        set_uj(powercap["pkg1"], 2_000_000)
        set_uj(powercap["dram"], 4_000_000)  # +3 J
        set_uj(powercap["core"], 900_000_000)  # inside the package: must not count
        set_uj(powercap["psys"], 999_000_000)  # whole platform: must not count
    assert reading.parts_kwh["cpu"] == pytest.approx((30 + 995) / 3.6e6)
    assert reading.parts_kwh["ram"] == pytest.approx(3 / 3.6e6)
    assert reading.parts_kwh["gpu"] == 0.0
    assert reading.energy_kwh == pytest.approx(1028 / 3.6e6)
    assert reading.source == "rapl"
    assert reading.sources_text() == "cpu=rapl,ram=rapl,gpu=none"


def test_poll_thread_catches_several_wraps_in_a_long_span(powercap: dict[str, Path]) -> None:
    sensors = detect(None, powercap_root=powercap["root"])
    pkg = powercap["pkg0"]
    with energy.span(sensors, 10.0, poll_s=0.01) as reading:
        # three laps of 600 J each: each wraps the 1 kJ counter at most once per poll
        value = 5_000_000
        for _ in range(3):
            value = (value + 600_000_000) % MAX_UJ
            set_uj(pkg, value)
            time.sleep(0.2)  # >> poll_s: the poller has stepped
    assert reading.parts_kwh["cpu"] == pytest.approx(1800 / 3.6e6)


def test_accumulator_wraps_by_the_counters_range() -> None:
    class Fake:
        wrap_j = 100.0

        def __init__(self) -> None:
            self.values = iter([90.0, 10.0, 50.0, 5.0])

        def read_j(self) -> float:
            return next(self.values)

    acc = Accumulator(Fake())
    assert acc.step() == pytest.approx(20.0)  # 90 -> 100 -> 10
    assert acc.step() == pytest.approx(60.0)  # +40
    assert acc.step() == pytest.approx(115.0)  # 50 -> 100 -> 5: +55


def test_unreadable_energy_falls_back_to_the_estimate(
    powercap: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root here, for whom chmod 000 changes nothing: raise as the kernel would.
    def denied(self: RaplZone) -> float:
        raise PermissionError(13, "Permission denied", str(self.path / "energy_uj"))

    monkeypatch.setattr(RaplZone, "read_j", denied)
    rapl, note = Rapl.open(powercap["root"])
    assert rapl is None and "not readable" in note and "CVE-2020-8694" in note
    sensors = detect(None, powercap_root=powercap["root"])
    assert sensors.sources() == {"cpu": "estimate", "ram": "estimate", "gpu": "none"}
    with energy.span(sensors, cpu_power_w_per_core=10.0) as reading:
        sum(i * i for i in range(100_000))
    assert reading.source == "estimate" and "CVE-2020-8694" in reading.note
    cpu_j, _ = energy.estimate_joules(reading.cpu_s, reading.wall_s, reading.rss_gb, 10.0, 0.375)
    assert reading.parts_kwh["cpu"] == pytest.approx(cpu_j / 3.6e6) and cpu_j > 0


def test_missing_powercap_and_package_without_dram(tmp_path: Path) -> None:
    rapl, note = Rapl.open(tmp_path / "absent")
    assert rapl is None and "not present" in note
    zone(tmp_path / "pc", "intel-rapl:0", "package-0", 0)
    sensors = detect(None, powercap_root=tmp_path / "pc")
    # CPU measured, RAM estimated: the label says both
    assert sensors.sources() == {"cpu": "rapl", "ram": "estimate", "gpu": "none"}
    with energy.span(sensors, 10.0) as reading:
        pass
    assert reading.source == "rapl+estimate"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no package zone" in Rapl.open(empty)[1]


def test_estimate_figures_by_hand() -> None:
    # 36 CPU-s at 10 W = 360 J; 2 GB at 0.375 W/GB for 100 s = 75 J
    assert energy.estimate_joules(36.0, 100.0, 2.0, 10.0, 0.375) == (360.0, 75.0)
    assert measure.estimate_kwh(36.0, 100.0, 2.0, 10.0, 0.375) == pytest.approx(435 / 3.6e6)


def test_combined_source_labels() -> None:
    assert combined_source({"cpu": "estimate", "ram": "estimate", "gpu": "none"}) == "estimate"
    assert combined_source({"cpu": "rapl", "ram": "estimate", "gpu": "nvml"}) == (
        "nvml+rapl+estimate"
    )
    assert combined_source({"cpu": "estimate", "ram": "estimate", "gpu": "unmeasured"}) == (
        "estimate+unmeasured"
    )


class FakeNvmlError(Exception):
    pass


def fake_pynvml(energy_mj: list[int] | None, power_mw: int = 100_000) -> types.ModuleType:
    """A pynvml stand-in: a settable energy counter (or none, like pre-Volta GPUs)."""
    mod = types.ModuleType("pynvml")
    state: dict[str, Any] = {"energy": energy_mj}

    def total_energy(handle: object) -> int:
        if state["energy"] is None:
            raise FakeNvmlError("not supported")
        return state["energy"][0]

    mod.NVMLError = FakeNvmlError  # type: ignore[attr-defined]
    mod.nvmlInit = lambda: None  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByUUID = lambda uuid: ("uuid", uuid)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: ("index", i)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetTotalEnergyConsumption = total_energy  # type: ignore[attr-defined]
    mod.nvmlDeviceGetPowerUsage = lambda handle: power_mw  # type: ignore[attr-defined]
    return mod


def test_nvml_energy_counter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    counter = [1_000_000]  # mJ
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(counter))
    nvml, note = Nvml.open(0, "GPU-1234")
    assert nvml is not None and nvml.method == "energy counter" and note == ""
    sensors = Sensors(rapl=None, nvml=nvml, gpu_used=True)
    with energy.span(sensors, 10.0) as reading:
        counter[0] += 360_000  # +360 J
    assert reading.parts_kwh["gpu"] == pytest.approx(1e-4)
    assert reading.source == "nvml+estimate"
    assert reading.sources == {"cpu": "estimate", "ram": "estimate", "gpu": "nvml"}


def test_nvml_power_sampling_without_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(None, power_mw=100_000))
    nvml, note = Nvml.open(0, None)
    assert nvml is not None and nvml.method == "power sampling" and "sampled" in note
    try:
        sensors = Sensors(rapl=None, nvml=nvml, gpu_used=True)
        with energy.span(sensors, 10.0) as reading:
            time.sleep(0.3)
        # constant 100 W: joules = 100 x the span's wall time
        assert reading.parts_kwh["gpu"] * 3.6e6 == pytest.approx(100 * reading.wall_s, rel=0.05)
    finally:
        nvml.counter.close()  # type: ignore[attr-defined]


def test_gpu_without_nvml_is_labelled_unmeasured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    nvml, note = Nvml.open(0, None)
    assert nvml is None and "nvidia-ml-py not installed" in note
    sensors = detect(
        types.SimpleNamespace(type="cuda", index=0),
        powercap_root=Path("/nonexistent"),
        nvml_open=lambda i, u: (None, "nvml: missing"),
    )
    assert sensors.sources()["gpu"] == "unmeasured"
    assert "nvml: missing" in sensors.notes


@pytest.mark.parametrize(
    ("gpu", "visible", "opened"),
    [
        (False, None, None),  # a CPU machine: no NVML, gpu "none"
        (True, None, (0, None)),  # the first device
        (True, "2,3", (2, None)),
        (True, "GPU-ab12,1", (0, "GPU-ab12")),
        (True, "", None),  # every device hidden
        (True, "-1", None),
    ],
)
def test_the_parent_reads_the_childs_gpu_without_torch(
    gpu: bool, visible: str | None, opened: tuple[int, str | None] | None
) -> None:
    """E1 from outside the candidate's process: the run process opens NVML for the
    device the training child will use, and its counter is read around the child."""
    calls: list[tuple[int, str | None]] = []
    counter = [5_000]  # mJ

    def nvml_open(index: int, uuid: str | None) -> tuple[Nvml | None, str]:
        calls.append((index, uuid))
        pynvml = fake_pynvml(counter)
        return Nvml(sensors_module._NvmlCounter(pynvml, None), "energy counter"), ""

    found = sensors_module.detect_outside(gpu, visible, Path("/nonexistent"), nvml_open)
    assert calls == ([opened] if opened else [])
    assert found.sources()["gpu"] == ("nvml" if opened else "none")
    with energy.span(found, 10.0) as reading:
        counter[0] += 36_000  # +36 J during the child's life
    expected = 1e-5 if opened else 0.0
    assert reading.parts_kwh.get("gpu", 0.0) == pytest.approx(expected)


def test_energy_span_in_measure_uses_the_given_sensors(powercap: dict[str, Path]) -> None:
    sensors = detect(None, powercap_root=powercap["root"])
    with measure.energy_span(10.0, 0.375, torch.device("cpu"), sensors) as span:
        set_uj(powercap["pkg0"], 8_600_000)  # +3.6 J
    assert span.parts_kwh["cpu"] == pytest.approx(1e-6)
    with measure.energy_span(10.0, 0.375, None, ESTIMATE_ONLY) as est:
        sum(i * i for i in range(100_000))
    assert est.source == "estimate" and est.energy_kwh > 0


def test_metrics_round_trip_keeps_new_fields() -> None:
    m = Metrics(
        A1=0.9,
        A2=0.8,
        E1=1e-5,
        E2=1e-7,
        F=1000.0,
        P=10,
        params_trainable=8,
        flops_per_image=123.0,
        latency_ms_p95=2.5,
        energy_sources="cpu=rapl,ram=estimate,gpu=none",
        E1_parts={"cpu": 9e-6, "ram": 1e-6, "gpu": 0.0},
        energy_note="x",
    )
    stored = json.dumps(m.to_dict())  # as the store keeps it
    back = Metrics.from_dict(json.loads(stored))
    assert json.dumps(back.to_dict()) == stored and back.E1_parts["cpu"] == 9e-6
    old = Metrics.from_dict({"A1": 1, "A2": 1, "E1": 0, "E2": 0, "F": 1, "P": 1})
    assert old.energy_sources == "" and old.E1_parts == {}
