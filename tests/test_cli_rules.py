"""`lemo-nade rules` and the CLI's bad-input contract (exit 2, one line, no traceback)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lemo_nade.cli import app

runner = CliRunner()


def test_rules_json_contract() -> None:
    metrics = '{"A1": 0.8, "A2": 0.7, "E1": 0.002, "E2": 1e-6, "F": 5000}'
    args = ["rules", "--setting", "2", "--metrics", metrics, "--json"]
    result = runner.invoke(app, [*args, "--no-pursue"])  # Algorithm 2 as written
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc["raw"]) == ["ACL", "ASC", "ADL", "RCL", "RSC", "RDL", "AD", "AMK",
                                "AWI", "AR", "RK", "RD", "AMN", "RN", "RR"]  # fmt: skip
    assert doc["raw"]["ADL"] == 0.9
    assert doc["resolved"] == [["ADL", 0.9], ["ACL", 0.6], ["ASC", 0.6], ["AMK", 0.6],
                               ["AR", 0.3], ["RN", 0.3], ["AD", 0.2], ["AWI", 0.2]]  # fmt: skip
    # by default as the default search asks: E2 = 1e-6 meets TE2 = 1e-5, and its rule fires
    pursued = json.loads(runner.invoke(app, args).stdout)
    assert pursued["thresholds"]["TE2"] == pytest.approx(9e-7)
    assert pursued["thresholds"]["TE1"] == 1e-3  # E1 = 0.002 misses it: left as set
    assert ["AD", 0.4] in pursued["resolved"]  # the E1 and the E2 rule: 0.2 + 0.2


def test_rules_threshold_override_changes_the_answer() -> None:
    metrics = '{"A1": 0.8, "A2": 0.7, "E1": 0.0, "E2": 0.0, "F": 1e6}'
    args = ["rules", "--setting", "3", "--metrics", metrics, "--json"]
    low = runner.invoke(app, [*args, "--thresholds", '{"TA2": 0.5, "OT": 0.5}'])
    assert json.loads(low.stdout)["resolved"] == []
    high = runner.invoke(app, args)
    assert json.loads(high.stdout)["resolved"][0] == ["ACL", 1.0]


def test_rules_table_output() -> None:
    metrics = '{"A1": 0.8, "A2": 0.7, "E1": 0.0, "E2": 0.0, "F": 1e6}'
    result = runner.invoke(app, ["rules", "--metrics", metrics])
    assert result.exit_code == 0
    assert "Add convolutional layer" in result.stdout
    assert "line 9: A2 < TA2" in result.stdout


def test_thresholds_no_rule_can_cross_are_named() -> None:
    """The paper's CIFAR-10 energy thresholds against what a small CPU model uses: the
    energy rules cannot fire, so setting 2 would search as setting 1 does."""
    metrics = '{"A1": 0.4, "A2": 0.4, "E1": 1e-5, "E2": 5e-7, "F": 5000}'
    args = ["rules", "--metrics", metrics, "--json", "--no-pursue"]
    doc = json.loads(runner.invoke(app, [*args, "--setting", "2"]).stdout)
    assert [w.split(" is ")[0] for w in doc["warnings"]] == ["TE1 = 0.001 kWh", "TE2 = 1e-05 kWh"]
    assert "is 100x above the measured E1 = 1e-05 kWh" in doc["warnings"][0]
    assert doc["warnings"][1].endswith("--set thresholds.TE2=5e-07")
    assert json.loads(runner.invoke(app, [*args, "--setting", "1"]).stdout)["warnings"] == []
    near = ["--thresholds", '{"TE1": 5e-5, "TE2": 4e-6}', "--setting", "2"]
    assert json.loads(runner.invoke(app, [*args, *near]).stdout)["warnings"] == []
    fast = metrics.replace('"F": 5000', '"F": 500000')
    table = runner.invoke(app, ["rules", "--metrics", fast, "--setting", "5", "--no-pursue"])
    assert "warning: TF = 20,000 images/s is 25x below the measured F = 500,000" in table.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["rules", "--metrics", "{not json"], "metrics: not valid JSON"),
        (["rules", "--metrics", '{"A1": 0.5}'], "metrics: missing 'A2'"),
        (["rules", "--metrics", '{"A1":1,"A2":1,"E1":0,"E2":0,"F":1,"Z":3}'], "unknown key 'Z'"),
        (["rules", "--setting", "6", "--metrics", "{}"], "setting: Input should be less than"),
        (["rules", "--metrics", '{"A1":"x","A2":1,"E1":0,"E2":0,"F":1}'], "A1: expected a finite"),
        (["rules", "--metrics", '{"A1":92,"A2":1,"E1":0,"E2":0,"F":1}'], "A1: accuracy is a fract"),
        (["rules", "--metrics", '{"A1":1,"A2":1,"E1":0,"E2":0,"F":-3}'], "metrics.F: must be >= 0"),
        (["rules", "--metrics", '{"A1":1,"A2":1,"E1":Infinity,"E2":0,"F":1}'], "E1: expected a"),
        (["run", "--epochs", "3", "--set", "epochs=4"], "epochs: given by --epochs and by --set"),
        (["run", "--set", "lr=nan"], "lr: Input should be a finite number"),
        (["run", "--config", "."], "config: . is a directory, not a file"),
        (["sweep", "."], "sweep: . is a directory, not a file"),
        (["export", "no-such-dir"], "no-such-dir is not a run directory"),
        (["run", "--iterations", "0"], "iterations: Input should be greater than or equal to 1"),
        (["run", "--dataset", "mnist"], "dataset: unknown dataset 'mnist'"),
        (["run", "--dataset", "cifar10"], "data_dir: dataset 'cifar10' is read from a local"),
        (["run", "--llm", "nope"], "llm: unknown architect 'nope'"),
        (["run", "--set", "thresholds.XX=1"], "thresholds.XX: unknown key"),
        (["run", "--config", "missing.toml"], "config: file missing.toml not found"),
        (["show", "no-such-dir"], "no-such-dir"),
        (["resume", "no-such-dir"], "no-such-dir"),
    ],
)
def test_bad_input_exit_2_one_line(args: list[str], needle: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_help_on_every_command() -> None:
    for command in ("run", "resume", "show", "rules"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Usage" in result.stdout
    helped = " ".join(runner.invoke(app, ["run", "--help"]).stdout.split())
    for default in ("(default 20)", "(default 512)", "(default 0.001)", "(default 10)"):
        assert default in helped.replace("│ ", "").replace(" │", "")


def test_version() -> None:
    from lemo_nade import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith(f"lemo-nade {__version__} (torch ")


def test_rules_pursue_shows_what_a_run_with_pursue_asks() -> None:
    """A model faster than TF: the paper's FPS rule is silent (and warned about, with
    --no-pursue); with --pursue, the default, TF moves past the model and the rule's
    instructions come back."""
    fast = '{"A1": 0.99, "A2": 0.97, "E1": 1e-4, "E2": 1e-6, "F": 50000}'
    args = ["rules", "--setting", "5", "--metrics", fast]
    plain = json.loads(runner.invoke(app, [*args, "--json", "--no-pursue"]).stdout)
    assert plain["resolved"] == [] and plain["thresholds"]["TF"] == 20000
    doc = json.loads(runner.invoke(app, [*args, "--json", "--pursue"]).stdout)
    assert doc["resolved"] == [["RSC", 0.3], ["AD", 0.3], ["RK", 0.3]]
    assert doc["thresholds"]["TF"] == pytest.approx(50000 / 0.9) and doc["warnings"] == []
    assert json.loads(runner.invoke(app, [*args, "--json"]).stdout) == doc  # the default
    table = runner.invoke(app, [*args, "--pursue"]).stdout
    assert "pursued: TF = 5.556e+04" in table and "line 28: F < TF" in table
