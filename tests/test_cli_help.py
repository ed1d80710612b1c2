"""`--help` shows boolean flags as flags (no value placeholder), and the flags still work.

typer's rich help prints an option's type in a value column (``--epochs <int>``); for a
flag that column said ``<bool>``, as if ``--json`` took a value. The app blanks it for
flags only (``lemo_nade.cli.app._plain_flags``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lemo_nade import __version__
from lemo_nade.cli import app

runner = CliRunner()
ROOT = typer.main.get_command(app)
COMMANDS = sorted(getattr(ROOT, "commands", {}))
# Wide, so no help line wraps and each option's row is one line.
ENV = {"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}


def _help(*path: str) -> str:
    result = runner.invoke(app, [*path, "--help"], env=ENV)
    assert result.exit_code == 0, result.output
    return result.stdout


def _rows(text: str) -> dict[str, str]:
    """Each option row of the rich help, keyed by its long name (the row's first word)."""
    rows = {}
    for line in text.splitlines():
        cells = [c for c in line.strip("│ ").split() if c != "*"]  # "*": required
        if cells and cells[0].startswith("--"):
            rows[cells[0]] = line
    return rows


def _options(*path: str) -> tuple[set[str], set[str]]:
    """(flags, options taking a value) of the command at ``path``, from click's objects."""
    command = ROOT
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    flags, valued = {"--help"}, set()
    for param in command.params:
        long = [o for o in param.opts if o.startswith("--")]
        if long and getattr(param, "is_flag", False):
            flags.add(long[0])
        elif long:
            valued.add(long[0])
    return flags, valued


def test_every_command_is_covered() -> None:
    assert {"run", "resume", "show", "doctor", "retrain", "sweep", "sweep-report"} <= set(COMMANDS)


@pytest.mark.parametrize(
    "path", [(), *((c,) for c in COMMANDS)], ids=lambda p: "/".join(p) or "main"
)
def test_flags_show_no_value_placeholder(path: tuple[str, ...]) -> None:
    rows = _rows(_help(*path))
    flags, valued = _options(*path)
    assert flags <= set(rows), (flags - set(rows), rows)
    for flag in flags:
        assert "<" not in rows[flag], rows[flag]
    for option in valued:  # the fix blanks flags only: a value still shows its type
        assert "<" in rows[option], rows[option]


def test_the_flags_named_in_the_issue_are_flags() -> None:
    assert "--version" in _options()[0]
    assert {"--json"} <= _options("run")[0] and {"--json"} <= _options("show")[0]
    assert "--fresh" in _options("retrain")[0] and "--dry-run" in _options("sweep")[0]


def test_flags_still_work(tmp_path: Path) -> None:
    metrics = '{"A1": 0.8, "A2": 0.7, "E1": 0.0, "E2": 0.0, "F": 1e6}'
    as_json = runner.invoke(app, ["rules", "--metrics", metrics, "--json"])
    assert as_json.exit_code == 0 and "resolved" in json.loads(as_json.stdout)
    sweep = tmp_path / "s.toml"
    sweep.write_text("[base]\niterations = 1\n[axes]\nsetting = [1, 4]\n")
    dry = runner.invoke(app, ["sweep", str(sweep), "--sweep-dir", str(tmp_path / "s"), "--dry-run"])
    assert dry.exit_code == 0 and "2 runs planned" in dry.stdout, dry.output
    assert not (tmp_path / "s").exists()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and f"lemo-nade {__version__} (torch " in version.stdout
    took_value = runner.invoke(app, ["rules", "--metrics", metrics, "--json=yes"])
    assert took_value.exit_code == 2  # a flag takes no value, as the help now says
