"""Configuration: defaults from the paper, Table 4 settings, TOML, one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lemo_nade.config import (
    SETTINGS,
    ConfigError,
    RunConfig,
    build_config,
    config_from_json,
    config_json,
    load_toml,
    parse_set,
)


def test_defaults_are_the_papers() -> None:
    cfg = build_config()
    t = cfg.thresholds
    assert (t.TA1, t.TA2, t.TE1, t.TE2, t.TF) == (0.95, 0.92, 1e-3, 1e-5, 20000.0)
    assert (cfg.batch_size, cfg.lr, cfg.plateau_patience) == (512, 1e-3, 5)
    assert cfg.setting == 1 and cfg.priorities.model_dump() == SETTINGS[1]
    assert cfg.dataset == "digits" and cfg.llm == "offline"


@pytest.mark.parametrize("setting", [1, 2, 3, 4, 5])
def test_settings_load_table_4(setting: int) -> None:
    assert build_config({"setting": setting}).priorities.model_dump() == SETTINGS[setting]


def test_table_4_values() -> None:
    assert SETTINGS[5] == {"PA1": 0.3, "PA2": 0.4, "PE1": 0.0, "PE2": 0.0, "PF": 0.3}
    assert SETTINGS[4]["PE1"] == SETTINGS[4]["PE2"] == 0.5


def test_explicit_priorities_override_the_setting() -> None:
    cfg = build_config({"setting": 4}, {"priorities": {"PF": 0.25}})
    assert cfg.priorities.PF == 0.25 and cfg.priorities.PE1 == 0.5


def test_layers_and_set_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("iterations = 3\nepochs = 2\n[thresholds]\nTA2 = 0.5\n")
    cfg = build_config(load_toml(path), {"epochs": 4}, parse_set(["thresholds.TF=100"]))
    assert (cfg.iterations, cfg.epochs) == (3, 4)
    assert (cfg.thresholds.TA2, cfg.thresholds.TF) == (0.5, 100.0)


def test_frozen() -> None:
    cfg = build_config()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type varies
        cfg.iterations = 3  # type: ignore[misc]


def test_json_round_trip() -> None:
    cfg = build_config({"setting": 5, "seed": 7})
    assert config_from_json(config_json(cfg)) == cfg
    assert isinstance(cfg, RunConfig)


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ({"iterations": 0}, "iterations: Input should be greater than or equal to 1"),
        ({"bogus": 1}, "bogus: unknown key; allowed: dataset, data_dir"),
        ({"thresholds": {"TX": 1}}, "thresholds.TX: unknown key; allowed: TA1, TA2, TE1"),
        ({"setting": 9}, "setting: Input should be less than or equal to 5"),
        ({"epochs": "ten"}, "epochs: Input should be a valid integer"),
        ({"priorities": {"PA1": -1}}, "priorities.PA1: Input should be greater than or equal"),
        ({"thresholds": {"TA1": 1.5}}, "thresholds.TA1: Input should be less than or equal to 1"),
        ({"parent": "worst"}, "parent: Input should be 'last' or 'best'"),
    ],
)
def test_bad_input_is_one_line_naming_the_key(layer: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(layer)
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("iterations = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "missing.toml")


def test_parse_set_rejects_missing_equals() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["iterations"])
    assert parse_set(["llm=offline"]) == {"llm": "offline"}


def test_pure_core_imports_no_torch() -> None:
    import subprocess

    code = (
        "import sys; import lemo_nade.config, lemo_nade.rules, lemo_nade.score, "
        "lemo_nade.store, lemo_nade.search, lemo_nade.report, lemo_nade.sandbox; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
