"""An API behind a real reverse proxy, with keyguard deciding every request.

:func:`start_example` runs a configuration from examples/ (nginx, Caddy) as a
reader would copy it, with only its addresses moved to free ports, in front of
an API (:class:`EchoAPI` in tests/test_proxies.py, a Starlette app in
tests/test_differential.py) and a real ``keyguard serve``.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.conftest import bearer, missing
from tests.server import HOST, KeyguardServer, free_port

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
LEARN_TIMEOUT = 10.0
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The addresses every example uses for keyguard, the API and the proxy itself.
KEYGUARD_ADDRESS = "127.0.0.1:8080"
API_ADDRESS = "127.0.0.1:9000"
PROXY_ADDRESS = "127.0.0.1:8000"


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


class ReverseProxy:
    """A proxy in the foreground, over a configuration written to ``prefix``; its
    output goes to ``prefix/LOG``."""

    name: ClassVar[str]
    example: ClassVar[Path]  # the configuration in examples/
    install: ClassVar[str]  # how to get the binary

    def __init__(self, prefix: Path, config: str, port: int) -> None:
        self.prefix = prefix
        self.port = port
        self.config = prefix / self.example.name
        self.config.write_text(config)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log(self) -> str:
        return (self.prefix / f"{self.name}.log").read_text(errors="replace")

    @classmethod
    def binary(cls) -> str:
        # /usr/sbin is not on every user's PATH, but it is where Debian installs nginx.
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        found = shutil.which(cls.name, path=path)
        if found is None:
            missing(
                f"{cls.name} is not installed, and these tests run {cls.example.name} from"
                f" examples/ in a real {cls.name}: {cls.install} (as root), or run .ci/run."
            )
        return found

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> Self:
        with (self.prefix / f"{self.name}.log").open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                cwd=self.prefix,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # workers share its process group
            )
        self._wait_until_listening()
        return self

    def _wait_until_listening(self) -> None:
        process = self._require_process()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with status {process.returncode} before it listened"
                    f" on port {self.port}.\n--- log ---\n{self.log}"
                )
            with suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
                return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(
            f"{self.name} did not listen on port {self.port} within {START_TIMEOUT:g} s."
            f"\n--- log ---\n{self.log}"
        )

    def stop(self) -> None:
        """The graceful signal, then SIGTERM, then SIGKILL to the whole process group."""
        process = self._require_process()
        for stop in (self.graceful, signal.SIGTERM):
            with suppress(ProcessLookupError):
                process.send_signal(stop)
            with suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT / 2)
                break
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)

    graceful: ClassVar[signal.Signals] = signal.SIGTERM

    def _require_process(self) -> "subprocess.Popen[bytes]":
        assert self._process is not None, f"{self.name} was never started"
        return self._process


class Nginx(ReverseProxy):
    """``nginx -p PREFIX -c PREFIX/nginx.conf -g "daemon off;"``."""

    name = "nginx"
    example = EXAMPLES / "nginx" / "nginx.conf"
    install = "install it with `apt-get install nginx`"
    graceful = signal.SIGQUIT

    def __init__(self, prefix: Path, config: str, port: int) -> None:
        (prefix / "temp").mkdir(parents=True)
        super().__init__(prefix, config, port)

    @property
    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def command(self) -> list[str]:
        prefix = str(self.prefix)
        return [self.binary(), "-p", prefix, "-c", str(self.config), "-g", "daemon off;"]


class Caddy(ReverseProxy):
    """``caddy run --config PREFIX/Caddyfile --adapter caddyfile``.

    Its home and XDG folders are inside ``prefix``, so that nothing it saves
    (an autosaved configuration, certificate storage) lands outside the test.
    """

    name = "caddy"
    example = EXAMPLES / "caddy" / "Caddyfile"
    install = "install it with `apt-get install caddy`"

    def command(self) -> list[str]:
        return [self.binary(), "run", "--config", str(self.config), "--adapter", "caddyfile"]

    def environment(self) -> dict[str, str]:
        home = {
            "HOME": str(self.prefix),
            "XDG_CONFIG_HOME": str(self.prefix / "config"),
            "XDG_DATA_HOME": str(self.prefix / "data"),
        }
        return {**os.environ, **home}


PROXIES: dict[str, type[ReverseProxy]] = {"nginx": Nginx, "caddy": Caddy}


@contextmanager
def running_example(
    kind: type["ReverseProxy"], folder: Path, keyguard: KeyguardServer, api_address: str
) -> Iterator["ReverseProxy"]:
    """:func:`start_example`, stopped on leaving."""
    server = start_example(kind, folder, keyguard, api_address)
    try:
        yield server
    finally:
        server.stop()


def start_example(
    kind: type[ReverseProxy], folder: Path, keyguard: KeyguardServer, api_address: str
) -> ReverseProxy:
    """The example configuration of ``kind``, pointed at ``keyguard`` and the API, started."""
    port = free_port()
    moves = {
        KEYGUARD_ADDRESS: f"{HOST}:{keyguard.port}",
        API_ADDRESS: api_address,
        PROXY_ADDRESS: f"{HOST}:{port}",
    }
    return kind(folder, with_addresses(kind.example, moves), port).start()
