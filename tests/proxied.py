"""An API behind a real reverse proxy, with keyguard deciding every request.

tests/test_nginx.py and tests/test_caddy.py run the examples in examples/ as a
reader would copy them, with only their addresses moved to free ports, in
front of :class:`EchoAPI` and a real ``keyguard serve``.
"""

import json
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.server import HOST, KeyguardServer

STOP_TIMEOUT = 10.0
LEARN_TIMEOUT = 10.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_addresses(example: Path, moves: Mapping[str, str]) -> str:
    """The example's text with each address in ``moves`` replaced, and nothing else changed."""
    text = example.read_text()
    for address, replacement in moves.items():
        assert address in text, f"{example} no longer mentions {address}"
        text = text.replace(address, replacement)
    return text


def known_account(keyguard: KeyguardServer) -> dict[str, Any]:
    """A new account and its first, full-access key, once the server knows them.

    The command line writes to the database from another process; the server
    learns of the new key from its change feed, a moment later.
    """
    created = keyguard.create_account("acme")
    url = f"{keyguard.base_url}/v1/api-keys/{created['api_key']['id']}"
    deadline = time.monotonic() + LEARN_TIMEOUT
    while httpx.get(url, headers=bearer(created["api_key"]["value"])).status_code == 401:
        assert time.monotonic() < deadline, "keyguard serve never learned of the new account"
        time.sleep(0.02)
    return created


class EchoAPI:
    """The protected API: answers every request with JSON describing it.

    The answer is ``{"method", "path", "headers"}``, where ``headers`` holds the
    ``X-Keyguard-*`` and ``X-Real-IP`` headers received (repeated ones joined by
    ", "); its status is 200, or the ``status`` query parameter's. ``hits`` counts
    the requests that reached it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits = 0
        self._server = ThreadingHTTPServer((HOST, 0), _echo_handler(self._count))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"{HOST}:{self._server.server_address[1]}"

    @property
    def hits(self) -> int:
        with self._lock:
            return self._hits

    def _count(self) -> None:
        with self._lock:
            self._hits += 1

    def start(self) -> "EchoAPI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_TIMEOUT)


def _echo_handler(count: Callable[[], None]) -> type[BaseHTTPRequestHandler]:
    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # proxies keep their upstream connections alive

        def do_GET(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            count()
            received: dict[str, list[str]] = {}
            for name, value in self.headers.items():
                if name.lower().startswith("x-keyguard-") or name.lower() == "x-real-ip":
                    received.setdefault(name.lower(), []).append(value)
            body = json.dumps(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {name: ", ".join(values) for name, values in received.items()},
                }
            ).encode()
            query = parse_qs(urlsplit(self.path).query)
            self.send_response(int(query.get("status", ["200"])[0]))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test output is not the place for an access log

    for method in ("HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        setattr(Echo, f"do_{method}", Echo.do_GET)
    return Echo
