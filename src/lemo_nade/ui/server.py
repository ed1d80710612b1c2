"""The dashboard's HTTP server: the standard library's ``ThreadingHTTPServer``, GET only.

Routes: ``/`` (runs list), ``/run?run=KEY``, ``/sweep?sweep=KEY`` (one static page shell
each, the same file), ``/static/NAME`` (the package's CSS and JS), and the JSON API:
``/api/runs``, ``/api/run?run=KEY[&v=VERSION]``, ``/api/iteration?run=KEY&i=N``,
``/api/sweep?sweep=KEY``. ``/api/run`` with the version the page already has answers
``{"version": ..., "unchanged": true}``: that is what idle polling costs.

Why it is safe to point at an LLM's output: every response carries a strict
Content-Security-Policy (scripts only from this server's static files, no inline script
or style, no requests elsewhere), ``nosniff``, and no framing; JSON escapes ``<``, ``>``
and ``&`` so no browser can read it as HTML; a request whose ``Host`` is not this
server's loopback name is refused (a web page elsewhere cannot reach it by DNS
rebinding). It only reads: stores through :mod:`.readonly`, files only from ``static/``
by a fixed list of names.

Pure: no torch import.
"""

from __future__ import annotations

import contextlib
import json
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lemo_nade.net import is_loopback
from lemo_nade.ui import views
from lemo_nade.ui.catalog import Catalog

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "plots.js": "text/javascript; charset=utf-8",
    "detail.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGES = ("/", "/run", "/sweep")
_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def to_json(doc: Any) -> bytes:
    """``doc`` as JSON that no browser can take for HTML (``<`` ``>`` ``&`` escaped)."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).translate(_JSON_ESCAPES).encode()


def _static(name: str) -> bytes:
    return resources.files("lemo_nade.ui").joinpath("static").joinpath(name).read_bytes()


class Handler(BaseHTTPRequestHandler):
    """One request: a page shell, a static file or a JSON document."""

    server: DashboardServer
    server_version = "lemo-nade-ui"
    sys_version = ""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if not self._host_ok():
            self._send(HTTPStatus.MISDIRECTED_REQUEST, to_json({"error": "unknown host"}))
            return
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route(url.path, query)  # the page may go away mid-answer

    def _route(self, path: str, query: dict[str, str]) -> None:
        if path in PAGES:
            self._send(HTTPStatus.OK, _static("index.html"), "text/html; charset=utf-8")
        elif path.startswith("/static/") and path[len("/static/") :] in STATIC:
            name = path[len("/static/") :]
            self._send(HTTPStatus.OK, _static(name), STATIC[name])
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")  # none, and no 404 noise
        elif path.startswith("/api/"):
            status, doc = self._api(path[len("/api/") :], query)
            self._send(status, to_json(doc))
        else:
            self._send(HTTPStatus.NOT_FOUND, to_json({"error": "not found"}))

    def _api(self, name: str, query: dict[str, str]) -> tuple[HTTPStatus, Any]:
        catalog = self.server.catalog
        if name == "runs":
            return HTTPStatus.OK, views.runs_list(catalog)
        if name == "sweep":
            catalog.scan()
            entry = catalog.sweeps.get(query.get("sweep", ""))
            if entry is None:
                return HTTPStatus.NOT_FOUND, {"error": "no such sweep"}
            return HTTPStatus.OK, views.sweep_page(catalog, entry)
        key = query.get("run", "")
        source = catalog.source(key)
        if source is None:
            catalog.scan()  # a run started after the last scan
            source = catalog.source(key)
        if source is None or name not in ("run", "iteration"):
            return HTTPStatus.NOT_FOUND, {"error": "no such run" if source is None else "not found"}
        if name == "run":
            if query.get("v") and query["v"] == source.version():
                return HTTPStatus.OK, {"version": query["v"], "unchanged": True}
            return HTTPStatus.OK, views.run_page(catalog.runs[key], source.load())
        loaded = source.load()
        detail = None
        if loaded.data is not None and query.get("i", "").isdigit():
            detail = views.iteration_detail(loaded.data, int(query["i"]))
        if detail is None:
            return HTTPStatus.NOT_FOUND, {"error": "no such iteration"}
        return HTTPStatus.OK, detail

    def _host_ok(self) -> bool:
        """The Host header names this server (a loopback one by a loopback name)."""
        if not is_loopback(self.server.bound_host):
            return True  # bound elsewhere on purpose: any name may reach it
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        return is_loopback(host)

    def _send(self, status: HTTPStatus, body: bytes, ctype: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype or "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a page polling every second would fill the terminal."""


class DashboardServer(ThreadingHTTPServer):
    """The server and what its handlers share: the catalog of runs and sweeps."""

    daemon_threads = True

    def __init__(self, catalog: Catalog, host: str = "127.0.0.1", port: int = 8765) -> None:
        self.catalog = catalog
        self.bound_host = host
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.bound_host, self.server_address[1]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
