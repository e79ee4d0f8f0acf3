"""The replay viewer's local HTTP server: the page's static assets and a few read-only JSON routes.

Nothing is served by path: ``/`` is the page, ``/static/NAME`` one of the assets loaded at start,
``/api/ROUTE`` a function of validated query parameters. So no URL, encoded or not, can name a
file of its own choosing. The server binds 127.0.0.1 by default and then also checks the Host
header, so a web page in the user's browser cannot reach it through DNS rebinding.

May import: agentrl.replay.data; light (no torch).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agentrl.replay.data import BadRequest, NotFound, RunData, dumps

STATIC_DIR = Path(__file__).parent / "static"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
#: Defence in depth: even if some data slipped into markup, no inline or foreign script could run.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def load_assets(folder: Path = STATIC_DIR) -> dict[str, tuple[bytes, str]]:
    """The static files, read once: name -> (body, content type). Flat folder, known types only."""
    assets = {}
    for path in sorted(folder.iterdir()):
        ctype = _CONTENT_TYPES.get(path.suffix)
        if ctype and path.is_file() and not path.is_symlink():
            assets[path.name] = (path.read_bytes(), ctype)
    return assets


def _int_param(params: dict[str, list[str]], name: str) -> int:
    values = params.get(name)
    if not values or len(values) != 1:
        raise BadRequest(f"missing parameter {name!r}")
    value = values[0]
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise BadRequest(f"parameter {name!r} must be a non-negative integer")
    return int(value)


def _split_param(params: dict[str, list[str]]) -> str:
    values = params.get("split", ["train"])
    if len(values) != 1:
        raise BadRequest("give one 'split'")
    return values[0]


#: The API. Each route maps validated parameters to a RunData method.
ROUTES: dict[str, Callable[[RunData, dict[str, list[str]]], Any]] = {
    "index": lambda data, p: data.index(),
    "metrics": lambda data, p: data.metrics(),
    "config": lambda data, p: data.config(),
    "step": lambda data, p: data.step(_split_param(p), _int_param(p, "step")),
    "episode": lambda data, p: data.episode(_split_param(p), _int_param(p, "step"), _int_param(p, "i")),
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ReplayServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the run's data, the assets and the Host names it answers to."""

    daemon_threads = True

    def __init__(self, data: RunData, host: str = "127.0.0.1", port: int = 0) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), ReplayHandler)
        self.data = data
        self.assets = load_assets()
        self.host = host
        self.port = self.server_address[1]
        # On loopback, only Host headers naming loopback: blocks DNS-rebinding pages. Bound to a
        # public address on purpose, the user chose to share it, under whatever name.
        self.allowed_hosts: set[str] | None = None
        if _is_loopback(host):
            self.allowed_hosts = {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]")}
            if host not in ("127.0.0.1", "localhost", "::1"):
                self.allowed_hosts.add(f"{host}:{self.port}")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"


class ReplayHandler(BaseHTTPRequestHandler):
    server: ReplayServer
    server_version = "agentrl-replay"
    sys_version = ""

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _handle(self, head: bool) -> None:
        allowed = self.server.allowed_hosts
        if allowed is not None and (self.headers.get("Host") or "").lower() not in allowed:
            self._send_json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"}, head)
            return
        url = urlsplit(self.path)
        path = url.path
        if path in ("/", "/index.html"):
            self._send_asset("index.html", head)
        elif path.startswith("/static/") and path[len("/static/") :] in self.server.assets:
            # Compared raw, not URL-decoded: asset names are plain, so any %-escape cannot match.
            self._send_asset(path[len("/static/") :], head)
        elif path.startswith("/api/") and path[len("/api/") :] in ROUTES:
            self._send_api(path[len("/api/") :], parse_qs(url.query, keep_blank_values=True), head)
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"}, head)

    def _send_api(self, route: str, params: dict[str, list[str]], head: bool) -> None:
        try:
            payload = ROUTES[route](self.server.data, params)
        except BadRequest as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)}, head)
        except NotFound as exc:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": str(exc)}, head)
        except Exception as exc:  # a bug or an unreadable file: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"}, head)
        else:
            self._send_json(HTTPStatus.OK, payload, head)

    def _send_asset(self, name: str, head: bool) -> None:
        body, ctype = self.server.assets[name]
        self._send(HTTPStatus.OK, body, ctype, head, cache="no-cache")

    def _send_json(self, status: HTTPStatus, payload: Any, head: bool) -> None:
        # "replace": a lone surrogate (a hand-written \ud800 escape that json.loads accepted) cannot be
        # encoded as UTF-8; it becomes "?" instead of failing the whole response.
        body = dumps(payload).encode("utf-8", errors="replace")
        self._send(status, body, "application/json; charset=utf-8", head)

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, head: bool, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet by default (the page polls every few seconds); AGENTRL_REPLAY_LOG=1 to see requests.
        if os.environ.get("AGENTRL_REPLAY_LOG"):
            super().log_message(format, *args)


def make_server(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 0) -> ReplayServer:
    """A bound, not yet running server (tests run ``serve_forever`` in a thread)."""
    return ReplayServer(RunData(run_dir), host=host, port=port)


def serve(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve the viewer for ``run_dir`` until interrupted; prints the address to open."""
    server = make_server(run_dir, host=host, port=port)
    if not _is_loopback(host):
        print(
            f"agentrl replay: warning: bound to {host}, so anyone who can reach this machine can read "
            "this run's trajectories",
            file=sys.stderr,
        )
    print(f"agentrl replay: {server.data.root} at {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
