"""The discovery bench's statistics (bench/discovery_stats.py) against values worked out
by hand, and its report on a real two-arm sweep of one seed."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from discovery_stats import hypervolume, paired, sign_p, summary, wilcoxon_p


def test_exact_paired_tests() -> None:
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)  # all better
    assert sign_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    assert wilcoxon_p([0.1, -0.2, 0.3, -0.4, 0.5]) == pytest.approx(1.0, abs=0.5)
    # W+ = 1 + 3 + 5 = 9 of 15: |9 - 7.5| = 1.5; 26 of the 32 sign patterns are as far
    assert wilcoxon_p([0.1, -0.2, 0.3, -0.4, 0.5]) == pytest.approx(26 / 32)
    assert wilcoxon_p([0.0, 0.0]) is None and sign_p([]) is None
    # ties get mean ranks: |d| = 1, 1, 2 -> ranks 1.5, 1.5, 3
    assert wilcoxon_p([1.0, -1.0, 2.0]) == pytest.approx(6 / 8)
    result = paired([0.5, 0.6, None], [0.4, 0.6, 0.1])
    assert (result["n"], result["wins"], result["ties"]) == (2, 1, 1)
    assert result["mean_diff"] == pytest.approx(0.05)


def test_summary_and_hypervolume() -> None:
    s = summary([1.0, 2.0, 3.0, None])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == 1.0
    assert s["ci95"] == pytest.approx([2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)])
    assert summary([None])["mean"] is None and summary([0.5])["ci95"] is None
    # one model: accuracy 0.5 at 10^3 parameters, reference 10^7: 0.5 x 4 decades
    assert hypervolume([(0.5, 1000)]) == pytest.approx(2.0)
    # a dominated point adds nothing; a smaller, worse one adds its own strip
    assert hypervolume([(0.5, 1000), (0.4, 10_000)]) == pytest.approx(2.0)
    assert hypervolume([(0.5, 1000), (0.2, 100)]) == pytest.approx(2.0 + 0.2)
    # against energy: 0.8 at 1e-5 kWh with the reference at 1e-2 kWh: 0.8 x 3 decades
    assert hypervolume([(0.8, 1e-5)], 1e-2) == pytest.approx(2.4)
    assert hypervolume([(0.8, 0.5)], 1e-2) == 0.0  # costlier than the reference


def test_arms_are_architects_or_labelled_configs() -> None:
    from discovery import parse_arm

    assert parse_arm("random") == ("random", {"llm": "random"})
    assert parse_arm("reference:m/v.py") == ("reference_m_v.py", {"llm": "reference:m/v.py"})
    assert parse_arm("paper llm=offline search=paper") == (
        "paper",
        {"llm": "offline", "search": "paper"},
    )


def test_an_arms_key_overrides_the_shared_one() -> None:
    """``--arm "reference llm=reference:F iterations=1"``: a fixed model needs one
    candidate per seed; the arm's ``iterations`` replaces the shared one (TOML allows a
    key once)."""
    import argparse

    import tomllib

    from discovery import parse_arm, sweep_toml

    args = argparse.Namespace(dataset="shifted-digits", setting=1, iterations=10, epochs=20,
                              data_dir=None, max_hours=None, set=["epochs=3"], seeds=2,
                              first_seed=0)  # fmt: skip
    _, keys = parse_arm("reference llm=reference:m.py iterations=1")
    doc = tomllib.loads(sweep_toml(args, keys))
    assert doc["base"]["iterations"] == 1 and doc["base"]["epochs"] == 3
    assert doc["base"]["llm"] == "reference:m.py" and doc["axes"]["seed"] == [0, 1]


def test_first_seed_gives_fresh_seeds_to_replicate_on() -> None:
    """``--first-seed 8 --seeds 3``: every arm runs seeds 8, 9 and 10, none of 0-7."""
    import tomllib

    from discovery import _parser, parse_arm, sweep_toml

    args = _parser().parse_args(["--arm", "random", "--seeds", "3", "--first-seed", "8"])
    doc = tomllib.loads(sweep_toml(args, parse_arm("random")[1]))
    assert doc["axes"]["seed"] == [8, 9, 10]
    default = _parser().parse_args(["--arm", "x"])
    assert tomllib.loads(sweep_toml(default, {}))["axes"]["seed"] == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_the_bench_reports_a_two_arm_sweep(tmp_path: Path) -> None:
    import discovery

    out = tmp_path / "out"
    code = discovery.main(["--arm", "offline", "--arm", "random", "--seeds", "1",
                           "--iterations", "2", "--epochs", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    text = (out / "discovery.md").read_text()
    assert "| offline |" in text and "| random |" in text and "offline vs random" in text
    assert (out / "anytime.png").stat().st_size > 1000
    again = discovery.main(["--arm", "offline", "--arm", "random", "--seeds", "1",
                            "--iterations", "2", "--epochs", "1", "--out", str(out)])  # fmt: skip
    assert again == 0  # resumed: both runs already finished


def test_efficiency_is_the_best_within_two_points_of_the_first_model() -> None:
    """Settings 2 and 5's figures: a leaner or faster model counts only while its accuracy
    is within 2 points of the first model's; the best-CM model's accuracy change."""
    from dataclasses import replace

    from discovery_stats import efficiency
    from test_report import record

    def model(idx: int, acc: float, e2: float, fps: float, cm: float):  # type: ignore[no-untyped-def]
        rec = record(idx, None, acc)
        metrics = replace(rec.evaluation.metrics, E2=e2, F=fps)
        return replace(rec, evaluation=replace(rec.evaluation, metrics=metrics), cm=cm)

    first = model(0, 0.50, 1e-6, 1000.0, 1.0)
    lean = model(1, 0.485, 2e-7, 4000.0, 1.2)  # 1.5 points lost: counts
    leaner = model(2, 0.47, 1e-7, 9000.0, 0.9)  # 3 points lost: does not
    figures = efficiency([first, lean, leaner])
    assert (figures["E2_near"], figures["F_near"]) == (2e-7, 4000.0)
    assert (figures["first_E2"], figures["first_F"]) == (1e-6, 1000.0)
    assert figures["cm_dA2"] == pytest.approx(-0.015)
    assert efficiency([])["F_near"] is None


def test_ratios_share_one_first_model_figure_per_seed() -> None:
    """The arms train the same first model but measure it apart: each arm's ratio uses
    the median over the arms, so an arm's noisy first measurement does not scale its
    result, and the spread of those measurements is the noise floor reported."""
    from discovery_stats import set_ratios

    def run(first_f: float, best_f: float) -> dict[str, float]:
        return {"first_F": first_f, "F_near": best_f, "first_E1": 1.0, "E1_near": 0.5,
                "first_E2": 2.0, "E2_near": 1.0}  # fmt: skip

    fast, lucky, slow = run(4000.0, 40000.0), run(8000.0, 40000.0), run(5000.0, 20000.0)
    spread = set_ratios([fast, lucky, slow])
    assert fast["F_x"] == lucky["F_x"] == pytest.approx(8.0)  # same model, same multiple
    assert slow["F_x"] == pytest.approx(4.0)
    assert (fast["E1_x"], fast["E2_x"]) == (0.5, 0.5)
    assert spread["first_F_spread"] == pytest.approx(2.0)
    assert spread["first_E1_spread"] == 1.0
    alone = run(4000.0, 40000.0)
    assert set_ratios([alone])["first_F_spread"] is None and alone["F_x"] == pytest.approx(10.0)


def test_an_arm_with_its_own_first_model_is_set_against_its_own() -> None:
    """A ``reference:`` or LLM arm starts from another model: its figure joins neither
    the shared denominator nor the noise floor."""
    from discovery_stats import set_ratios

    def run(model: str, first_f: float, best_f: float) -> dict[str, Any]:
        return {"first_model": model, "first_F": first_f, "F_near": best_f}

    a, b, own = run("m", 4000.0, 8000.0), run("m", 6000.0, 10000.0), run("r", 100.0, 300.0)
    spread = set_ratios([a, b, own])
    assert (a["F_x"], b["F_x"], own["F_x"]) == (pytest.approx(1.6), 2.0, 3.0)
    assert spread["first_F_spread"] == pytest.approx(1.5)
    assert spread["first_E1_spread"] is None and a["E1_x"] is None


def test_a_promotion_is_no_duplicate_and_the_last_searched_candidate_is_kept_apart() -> None:
    from dataclasses import replace

    from discovery_stats import run_figures
    from test_report import record

    first, child = record(0, None, 0.40), record(1, 0, 0.44)
    twin = replace(record(2, 0, 0.30), code=first.code)  # the paper's search retrains it
    promoted = replace(record(3, 1, 0.47), code=child.code, epochs=16)
    figures = run_figures([first, child, twin, promoted])
    assert figures["duplicates"] == 1  # the twin, not the promotion
    assert (figures["best_A2"], figures["last_A2"]) == (0.47, 0.47)
    assert (figures["last_search_A2"], figures["promoted"]) == (0.30, 1)
