"""The expert system against hand-worked cases (paper Algorithm 2, Algorithm 3, Table 2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lemo_nade.config import SETTINGS
from lemo_nade.rules import (
    CONFLICTS,
    INSTRUCTIONS,
    RULES,
    RulesInputError,
    fired_rules,
    instructions_for,
    nnges,
    resolve_conflict,
)

PAPER_THRESHOLDS = {"TA1": 0.95, "TA2": 0.92, "TE1": 1e-3, "TE2": 1e-5, "TF": 20000.0,
                    "OT": 0.05, "UT": 0.02}  # fmt: skip
# A model that meets every target: no rule fires.
GOOD = {"A1": 0.99, "A2": 0.97, "E1": 1e-4, "E2": 1e-6, "F": 50000.0}


def test_rule_book_is_table_2() -> None:
    assert INSTRUCTIONS == ("ACL", "ASC", "ADL", "RCL", "RSC", "RDL", "AD", "AMK",
                            "AWI", "AR", "RK", "RD", "AMN", "RN", "RR")  # fmt: skip
    assert "AWI" not in CONFLICTS
    assert all(CONFLICTS[CONFLICTS[c]] == c for c in CONFLICTS)
    assert len(CONFLICTS) == 14


def test_algorithm_2_as_data() -> None:
    table = [(r.line, r.instructions, r.priority) for r in RULES]
    assert table == [
        (3, ("ACL", "ADL", "AMK", "ASC"), "PA1"),
        (9, ("ACL", "ADL", "AMK", "ASC"), "PA2"),
        (15, ("AD", "AWI", "RCL", "RK", "RSC"), "PE1"),
        (22, ("AD", "RCL", "RK", "RDL"), "PE2"),
        (28, ("AD", "RK", "RSC"), "PF"),
        (33, ("ADL", "RCL", "RK", "RN", "AR"), "PA1"),
        (40, ("RD", "ACL", "AMK", "ADL", "AMN", "ASC", "RR"), "PA2"),
    ]


def test_nothing_fires_for_a_model_meeting_all_targets() -> None:
    raw, resolved = instructions_for(GOOD, SETTINGS[2], PAPER_THRESHOLDS)
    assert set(raw.values()) == {0.0}
    assert resolved == []


def test_setting_3_low_validation_accuracy_ties_keep_rule_book_order() -> None:
    # Paper Case 1: a weak first model gets ACL, ASC, ADL (and AMK), equal priority.
    metrics = {**GOOD, "A1": 0.90, "A2": 0.85}  # gap 0.05 is not > OT 0.05 (see below)
    raw, resolved = instructions_for(metrics, SETTINGS[3], PAPER_THRESHOLDS)
    assert {k: v for k, v in raw.items() if v} == {"ACL": 1.0, "ASC": 1.0, "ADL": 1.0, "AMK": 1.0}
    assert resolved == [("ACL", 1.0), ("ASC", 1.0), ("ADL", 1.0), ("AMK", 1.0)]


def test_setting_4_energy_rules() -> None:
    metrics = {**GOOD, "E1": 2e-3, "E2": 2e-5}
    raw, resolved = instructions_for(metrics, SETTINGS[4], PAPER_THRESHOLDS)
    assert {k: v for k, v in raw.items() if v} == {
        "AD": 1.0, "RCL": 1.0, "RK": 1.0, "AWI": 0.5, "RSC": 0.5, "RDL": 0.5,
    }  # fmt: skip
    assert resolved == [("RCL", 1.0), ("AD", 1.0), ("RK", 1.0),
                        ("RSC", 0.5), ("RDL", 0.5), ("AWI", 0.5)]  # fmt: skip


def test_setting_1_overfitting_conflicts_zeroed() -> None:
    # A2 < TA2 adds PA2 = 0.6 to ACL ADL AMK ASC; overfitting (0.19 > OT) adds PA1 = 0.4
    # to ADL RCL RK RN AR. ACL (0.6) then removes RCL (0.4); AMK removes RK.
    metrics = {**GOOD, "A1": 0.99, "A2": 0.80}
    raw, resolved = instructions_for(metrics, SETTINGS[1], PAPER_THRESHOLDS)
    assert raw["ADL"] == 1.0 and raw["RCL"] == 0.4 and raw["RK"] == 0.4
    assert resolved == [("ADL", 1.0), ("ACL", 0.6), ("ASC", 0.6), ("AMK", 0.6),
                        ("AR", 0.4), ("RN", 0.4)]  # fmt: skip


def test_setting_2_underfitting_and_energy() -> None:
    metrics = {"A1": 0.80, "A2": 0.85, "E1": 2e-3, "E2": 0.0, "F": 1e6}
    raw, resolved = instructions_for(metrics, SETTINGS[2], PAPER_THRESHOLDS)
    assert raw == {"ACL": 0.9, "ASC": 0.9, "ADL": 0.9, "RCL": 0.2, "RSC": 0.2, "RDL": 0.0,
                   "AD": 0.2, "AMK": 0.9, "AWI": 0.2, "AR": 0.0, "RK": 0.2, "RD": 0.3,
                   "AMN": 0.3, "RN": 0.0, "RR": 0.3}  # fmt: skip
    # RD (0.3) outranks AD (0.2), so AD is dropped; AWI has no conflict and stays.
    assert resolved == [("ACL", 0.9), ("ASC", 0.9), ("ADL", 0.9), ("AMK", 0.9),
                        ("RD", 0.3), ("AMN", 0.3), ("RR", 0.3), ("AWI", 0.2)]  # fmt: skip


def test_setting_5_fps_rule() -> None:
    metrics = {**GOOD, "F": 5000.0}
    _, resolved = instructions_for(metrics, SETTINGS[5], PAPER_THRESHOLDS)
    assert resolved == [("RSC", 0.3), ("AD", 0.3), ("RK", 0.3)]


ALL_ONE = {"PA1": 1.0, "PA2": 1.0, "PE1": 1.0, "PE2": 1.0, "PF": 1.0}


@pytest.mark.parametrize(
    ("a1", "a2"),
    [
        (0.95, 0.92),  # A1 = TA1, A2 = TA2
        (0.97, 0.92),  # A1 - A2 = OT on paper (0.04999999999999993 in floats)
        (0.95, 0.97),  # A2 - A1 = UT on paper (0.020000000000000018 in floats)
    ],
)
def test_thresholds_are_strict_inequalities(a1: float, a2: float) -> None:
    # every metric exactly at its threshold, every priority non-zero: nothing may fire
    at = {"A1": a1, "A2": a2, "E1": 1e-3, "E2": 1e-5, "F": 20000.0}
    assert fired_rules(at, PAPER_THRESHOLDS) == []
    assert set(nnges(at, ALL_ONE, PAPER_THRESHOLDS).values()) == {0.0}


def test_a_gap_equal_to_ot_on_paper_does_not_fire_in_floats() -> None:
    # 0.90 - 0.85 is 0.05000000000000004 in floats; the paper's > OT (0.05) is false
    assert [r.line for r in fired_rules({**GOOD, "A1": 0.90, "A2": 0.85}, PAPER_THRESHOLDS)] == [
        3,
        9,
    ]
    # just past each boundary, each rule fires
    past = {"A1": 0.9499, "A2": 0.9199, "E1": 1.0001e-3, "E2": 1.0001e-5, "F": 19999.9}
    assert [r.line for r in fired_rules(past, PAPER_THRESHOLDS)] == [3, 9, 15, 22, 28]
    assert [r.line for r in fired_rules({**GOOD, "A1": 0.99, "A2": 0.9399}, PAPER_THRESHOLDS)] == [
        33
    ]
    assert [r.line for r in fired_rules({**GOOD, "A1": 0.95, "A2": 0.9701}, PAPER_THRESHOLDS)] == [
        40
    ]


def test_later_conflict_is_zeroed_even_when_rule_book_puts_it_first() -> None:
    cmd = dict.fromkeys(INSTRUCTIONS, 0.0) | {"ACL": 0.5, "RCL": 0.7, "AWI": 0.7}
    assert resolve_conflict(cmd) == [("RCL", 0.7), ("AWI", 0.7)]


def test_equal_conflicting_values_keep_the_earlier_in_rule_book() -> None:
    cmd = dict.fromkeys(INSTRUCTIONS, 0.0) | {"RR": 0.4, "AR": 0.4}
    assert resolve_conflict(cmd) == [("AR", 0.4)]


def test_float_sums_equal_on_paper_tie() -> None:
    # 0.1 + 0.2 != 0.3 in floats; rounding keeps the paper's tie (rule-book order).
    p = {"PA1": 0.1, "PA2": 0.2, "PE1": 0.3, "PE2": 0.0, "PF": 0.0}
    metrics = {**GOOD, "A1": 0.5, "A2": 0.5, "E1": 1.0}
    raw = nnges(metrics, p, PAPER_THRESHOLDS)
    assert raw["ACL"] == raw["AD"] == 0.3
    assert [c for c, _ in resolve_conflict(raw)][:2] == ["ACL", "ASC"]


@pytest.mark.parametrize("missing", ["A1", "F"])
def test_missing_metric_is_named(missing: str) -> None:
    metrics = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(RulesInputError, match=missing):
        nnges(metrics, SETTINGS[1], PAPER_THRESHOLDS)


def test_nan_metric_rejected() -> None:
    with pytest.raises(RulesInputError, match="A2"):
        nnges({**GOOD, "A2": float("nan")}, SETTINGS[1], PAPER_THRESHOLDS)


def _reference_algorithm_3(cmd: dict[str, float]) -> dict[str, float]:
    """A line-by-line transcription of the paper's pseudocode, for comparison."""
    cmd = {k: cmd[k] for k in INSTRUCTIONS}  # Algorithm 2, line 2 builds it in this order
    keys = sorted(cmd, key=lambda k: -cmd[k])  # line 3 (stable)
    cmd = {k: cmd[k] for k in keys}
    refined: dict[str, float] = {}
    m = 0
    while m < len(cmd):
        if cmd[keys[m]] > 0:
            refined[keys[m]] = cmd[keys[m]]
            n = m + 1
            while n < len(cmd):
                if CONFLICTS.get(keys[m]) == keys[n]:
                    cmd[keys[n]] = 0
                n += 1
        m += 1
    return refined


priority = st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0])
cmd_strategy = st.fixed_dictionaries({code: priority for code in INSTRUCTIONS})
metric_strategy = st.fixed_dictionaries({
    "A1": st.floats(0, 1), "A2": st.floats(0, 1), "E1": st.floats(0, 1e-2),
    "E2": st.floats(0, 1e-4), "F": st.floats(0, 1e5),
})  # fmt: skip
priority_strategy = st.fixed_dictionaries({k: priority for k in SETTINGS[1]})


@given(cmd_strategy)
def test_resolve_matches_the_papers_pseudocode(cmd: dict[str, float]) -> None:
    assert resolve_conflict(cmd) == list(_reference_algorithm_3(dict(cmd)).items())


@given(metric_strategy, priority_strategy)
def test_resolved_properties(metrics: dict[str, float], priorities: dict[str, float]) -> None:
    raw, resolved = instructions_for(metrics, priorities, PAPER_THRESHOLDS)
    codes = [c for c, _ in resolved]
    values = [v for _, v in resolved]
    assert all(v > 0 for v in values)
    assert values == sorted(values, reverse=True)
    assert len(set(codes)) == len(codes)
    for code in codes:
        assert CONFLICTS.get(code) not in codes
        assert raw[code] == dict(resolved)[code]
    # Every positive raw instruction is either kept or beaten by its conflict partner.
    for code, value in raw.items():
        if value > 0 and code not in codes:
            assert CONFLICTS.get(code) in codes and raw[CONFLICTS[code]] >= value
