"""``pursue``: the energy and FPS rules keep firing past a met threshold while their
priority is > 0 (:func:`lemo_nade.rules.pursued`); accuracy thresholds stay as set."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lemo_nade import rules
from lemo_nade.config import SETTINGS, build_config
from test_rules import GOOD, PAPER_THRESHOLDS


def test_a_met_fps_threshold_moves_past_the_model_and_its_rule_fires() -> None:
    metrics = {**GOOD, "F": 50000.0}  # meets TF = 20,000 and every accuracy target
    assert rules.instructions_for(metrics, SETTINGS[5], PAPER_THRESHOLDS)[1] == []
    moved = rules.pursued(metrics, SETTINGS[5], PAPER_THRESHOLDS)
    assert moved["TF"] == pytest.approx(50000.0 / rules.PURSUE_STEP)
    assert {k: v for k, v in moved.items() if k != "TF"} == {
        k: v for k, v in PAPER_THRESHOLDS.items() if k != "TF"
    }
    _, resolved = rules.instructions_for(metrics, SETTINGS[5], moved)
    assert resolved == [("RSC", 0.3), ("AD", 0.3), ("RK", 0.3)]
    assert rules.instructions_for(metrics, SETTINGS[5], PAPER_THRESHOLDS, True)[1] == resolved


def test_met_energy_thresholds_move_below_the_model() -> None:
    metrics = {**GOOD, "E1": 1e-4, "E2": 1e-6}  # 10x under TE1 = 1e-3, TE2 = 1e-5
    moved = rules.pursued(metrics, SETTINGS[2], PAPER_THRESHOLDS)
    assert moved["TE1"] == pytest.approx(1e-4 * rules.PURSUE_STEP)
    assert moved["TE2"] == pytest.approx(1e-6 * rules.PURSUE_STEP)
    assert moved["TF"] == PAPER_THRESHOLDS["TF"]  # PF = 0 in setting 2
    fired = {rule.line for rule in rules.fired_rules(metrics, moved)}
    assert fired == {15, 22}


def test_thresholds_not_met_and_accuracy_thresholds_are_left_alone() -> None:
    metrics = {"A1": 0.5, "A2": 0.4, "E1": 5e-3, "E2": 5e-5, "F": 5000.0}  # misses all
    everything = {"PA1": 0.2, "PA2": 0.2, "PE1": 0.2, "PE2": 0.2, "PF": 0.2}
    assert rules.pursued(metrics, everything, PAPER_THRESHOLDS) == PAPER_THRESHOLDS
    # missed by less than the step: still unmet, still as set (their rules fire anyway)
    close = {**metrics, "E1": 1.05e-3, "E2": 1.05e-5, "F": 19000.0}
    assert rules.pursued(close, everything, PAPER_THRESHOLDS) == PAPER_THRESHOLDS
    negative = {"PA1": 0.2, "PA2": 0.2, "PE1": -0.2, "PE2": -0.2, "PF": -0.2}
    assert rules.pursued({**GOOD, "F": 90000.0}, negative, PAPER_THRESHOLDS) == PAPER_THRESHOLDS


@pytest.mark.parametrize("setting", [1, 3])
def test_settings_without_cost_priorities_ask_the_same(setting: int) -> None:
    metrics = {**GOOD, "A2": 0.5, "F": 90000.0, "E1": 1e-6}
    moved = rules.pursued(metrics, SETTINGS[setting], PAPER_THRESHOLDS)
    assert moved == PAPER_THRESHOLDS


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_a_measurement_that_is_not_a_positive_number_moves_nothing(value: float) -> None:
    metrics = {**GOOD, "F": value, "E1": value, "E2": value}
    assert rules.pursued(metrics, SETTINGS[2] | {"PF": 0.3}, PAPER_THRESHOLDS) == (PAPER_THRESHOLDS)


def test_the_presets() -> None:
    assert build_config({}, {}).pursue is True  # the default search, "discover"
    assert build_config({}, {"search": "paper"}).pursue is False
    assert build_config({}, {"search": "paper", "pursue": True}).pursue is True
    assert build_config({}, {"pursue": False}).pursue is False


@pytest.mark.usefixtures("shared_sandbox")
def test_a_run_with_pursue_asks_for_speed_past_a_met_fps_threshold(tmp_path: Path) -> None:
    """A real candidate that meets every threshold: the paper's rules ask nothing; with
    ``pursue`` the record's next instructions are the FPS rule's."""
    from lemo_nade.runs import create_run
    from lemo_nade.search import run_search

    easy = {"TA1": 0.01, "TA2": 0.01, "TF": 1.0, "TE1": 1.0, "TE2": 1.0, "OT": 1.0, "UT": 1.0}
    base = {"iterations": 1, "epochs": 1, "dataset": "digits", "promote": 0, "setting": 5}
    cfg = build_config({}, base | {"thresholds": easy})  # pursue: the default search's
    (record,) = run_search(create_run(cfg, tmp_path / "runs")).records
    assert record.evaluation.metrics is not None
    values = record.evaluation.metrics.for_rules()
    assert rules.instructions_for(values, SETTINGS[5], easy)[1] == []
    assert [code for code, _ in record.resolved_instructions] == ["RSC", "AD", "RK"]


pytest_plugins = ["sandbox_fixtures"]
