"""CM (Eq. 1), kWh-PUE (Eq. 2) and CO2 (Eq. 3) against hand-computed values."""

from __future__ import annotations

import math

import pytest

from lemo_nade.score import co2_lbs, combined_effectiveness, energy_to_kwh_pue, kwh_pue, saturating

T = {"TF": 20000.0, "TE1": 1e-3, "TE2": 1e-5}
W = {"AW": 1.0, "FW": 0.5, "EW": 0.5}


def test_cm_at_thresholds() -> None:
    # NF = TNE = VNE = 0.5 at the thresholds: 1.0*(0.9+0.8) + 0.5*0.5 - 0.5*(0.5+0.5) = 1.45
    m = {"A1": 0.9, "A2": 0.8, "F": 20000.0, "E1": 1e-3, "E2": 1e-5}
    assert combined_effectiveness(m, T, W) == pytest.approx(1.45)


def test_cm_hand_computed_off_threshold() -> None:
    # NF = 60000/80000 = 0.75; TNE = 3e-3/4e-3 = 0.75; VNE = 0 (no energy)
    # CM = 2*(0.5+0.5) + 1*0.75 - 4*(0.75+0) = 2 + 0.75 - 3 = -0.25
    m = {"A1": 0.5, "A2": 0.5, "F": 60000.0, "E1": 3e-3, "E2": 0.0}
    assert combined_effectiveness(m, T, {"AW": 2.0, "FW": 1.0, "EW": 4.0}) == pytest.approx(-0.25)


def test_best_model_prefers_accuracy_then_speed_then_energy() -> None:
    base = {"A1": 0.9, "A2": 0.8, "F": 20000.0, "E1": 1e-3, "E2": 1e-5}
    cm = combined_effectiveness(base, T, W)
    assert combined_effectiveness({**base, "A2": 0.85}, T, W) > cm
    assert combined_effectiveness({**base, "F": 40000.0}, T, W) > cm
    assert combined_effectiveness({**base, "E1": 2e-3}, T, W) < cm


def test_saturating_bounds() -> None:
    assert saturating(0.0, 1.0) == 0.0
    assert saturating(float("nan"), 1.0) == 0.0
    assert saturating(math.inf, 1.0) == 1.0
    assert saturating(3.0, 1.0) == 0.75
    with pytest.raises(ValueError):
        saturating(1.0, 0.0)


def test_eq2_and_eq3_hand_computed() -> None:
    # 2 h on a 100 W CPU, 20 W RAM and one 250 W GPU: 1.58*2*370/1000 = 1.1692 kWh-PUE
    pt = kwh_pue(2.0, cpu_power_w=100, ram_power_w=20, gpu_power_w=250, gpus=1)
    assert pt == pytest.approx(1.1692)
    assert co2_lbs(pt) == pytest.approx(0.954 * 1.1692)


def test_eq3_matches_paper_table_3_row() -> None:
    # Table 3, GPT-4 Turbo setting 1: 0.5157 kWh-PUE -> 0.4920 lbs CO2e.
    assert co2_lbs(0.5157) == pytest.approx(0.4920, abs=5e-5)


def test_energy_to_kwh_pue() -> None:
    assert energy_to_kwh_pue(1.0) == pytest.approx(1.58)
    assert energy_to_kwh_pue(1.0, pue=1.2) == pytest.approx(1.2)
