"""Command line: parses, builds a config, calls the library. Exit codes: 0 ok,
1 failure, 2 bad input (one line on stderr, never a traceback).

One module per group of commands; importing them registers the commands on
:data:`app` in the order ``--help`` lists them."""

from __future__ import annotations

from lemo_nade.cli import discover, results, sweeps, ui
from lemo_nade.cli.app import app

__all__ = ["app", "discover", "main", "results", "sweeps", "ui"]


def main() -> None:
    app()
