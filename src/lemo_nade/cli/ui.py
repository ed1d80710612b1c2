"""The ``ui`` command: a local dashboard that watches runs and sweeps as they go."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lemo_nade.cli.app import app, err, friendly, line, out
from lemo_nade.config import ConfigError

Dirs = Annotated[
    list[Path] | None,
    typer.Argument(
        metavar="RUNS_OR_SWEEP_DIR",
        help="Run, sweep or runs directories (default: runs).",
        show_default=False,
    ),
]
Host = Annotated[
    str, typer.Option(help="Address to listen on; anything but loopback is reachable by others.")
]
Port = Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")]


@app.command("ui")
@friendly
def ui_cmd(dirs: Dirs = None, host: Host = "127.0.0.1", port: Port = 8765) -> None:
    """Serve a live dashboard of runs and sweeps on this machine (read-only).

    Pages update as iterations are committed; a running search is never slowed or
    blocked. Stop with Ctrl-C.
    """
    from lemo_nade.ui import is_loopback, make_server

    try:
        server = make_server(dirs or [Path("runs")], host, port)
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen ({exc.strerror})") from None
    if not is_loopback(host):
        err.print(
            line(
                ("warning:", "bold yellow"),
                f" listening on {host}: anyone who can reach this machine can read these runs",
            ),
            soft_wrap=True,
        )
    out.print(line("dashboard: ", (server.url, "bold"), " (Ctrl-C to stop)"), soft_wrap=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        err.print("stopped")
    finally:
        server.server_close()
