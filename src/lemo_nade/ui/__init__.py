"""``lemo-nade ui``: watch runs and sweeps live in a browser, from their stores, read-only.

- :mod:`.readonly`: a store opened ``mode=ro``, re-read only when it changed.
- :mod:`.catalog`: which runs and sweeps the directories given hold, by URL key.
- :mod:`.views`: what each JSON endpoint answers (rows from :mod:`lemo_nade.reporting`).
- :mod:`.server`: the HTTP server, its routes and its security headers.
- ``static/``: the page shell, its CSS, and the JS that polls and draws SVG plots.

Pure: no torch import; the standard library's HTTP server, nothing fetched from elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from lemo_nade.ui.catalog import Catalog, check_dirs
from lemo_nade.ui.server import DashboardServer, is_loopback

__all__ = ["Catalog", "DashboardServer", "is_loopback", "make_server"]


def make_server(dirs: list[Path], host: str = "127.0.0.1", port: int = 8765) -> DashboardServer:
    """A server for the runs and sweeps under ``dirs`` (checked first: a
    :class:`~lemo_nade.store.StoreError` for a bad one), bound but not yet serving."""
    return DashboardServer(Catalog(check_dirs(dirs)), host, port)
