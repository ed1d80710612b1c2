"""Command line: parses, builds a config, calls the library. Exit codes: 0 ok,
1 failure, 2 bad input (one line on stderr, never a traceback).

One module per group of commands; importing them registers the commands on
:data:`app` in the order ``--help`` lists them."""

from __future__ import annotations

# the order --help lists them in: run, resume, show, then rules and doctor, then the rest
from lemo_nade.cli import discover  # isort: skip
from lemo_nade.cli import checks, results, sweeps, ui  # isort: skip
from lemo_nade.cli.app import app

__all__ = ["app", "checks", "discover", "main", "results", "sweeps", "ui"]


def main() -> None:
    app()
