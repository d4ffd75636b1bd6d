"""Real ``keyguard serve`` processes, for tests that need a server over TCP and for
the benchmarks (:mod:`benchmarks.server` builds on this module).

A :class:`KeyguardServer` owns one database folder and one environment; it can
be started, stopped gracefully (SIGTERM) or killed (SIGKILL), and started again
on the same database. Each process runs in its own session, so stopping it also
reaches the worker processes that ``--workers`` forks. :class:`Servers` hands
out servers and ends every one of them when the test ends, pass or fail (the
``servers`` fixture of tests/conftest.py gives each test one).

Nothing here imports pytest or keyguard itself: a server is reached only over
HTTP and the ``keyguard`` command, as an operator reaches it.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import httpx

HOST = "127.0.0.1"
SECRET = "server-test-secret-" + "0123456789abcdef" * 3
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
PIN_TIMEOUT = 5.0
WORKER_PID = re.compile(r'^keyguard_snapshot_keys\{pid="(\d+)"\}', re.MULTILINE)
# Every test client is 127.0.0.1, and these tests and the benchmarks poll refused
# keys and change keys faster than a person on purpose: the abuse limits (tested
# in-process) would throttle them.
NO_LIMITS = {
    "KEYGUARD_AUTH_FAILURES_PER_MINUTE": "0",
    "KEYGUARD_MANAGEMENT_WRITES_PER_MINUTE": "0",
}


class ServerError(RuntimeError):
    """A keyguard process did not start, answer or stop as expected."""


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header that presents ``token``."""
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True, slots=True)
class Tenant:
    """An account and its first, full-access key."""

    account_id: int
    key_id: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


def keyguard_command() -> list[str]:
    """The ``keyguard`` console script installed beside this interpreter."""
    script = Path(sys.executable).with_name("keyguard")
    if not script.exists():
        raise ServerError(f"No keyguard console script at {script}; install the package first.")
    return [str(script)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class KeyguardServer:
    """``keyguard serve`` on 127.0.0.1 over the SQLite database in ``folder``.

    With ``secret_key=None`` the server generates its secret file beside the
    database. ``settings`` adds ``KEYGUARD_*`` variables, e.g.
    ``{"KEYGUARD_USAGE_FLUSH_INTERVAL": "3600"}`` or another
    ``KEYGUARD_DATABASE_URL``; ``options`` adds command-line options of ``serve``,
    e.g. ``["--access-log"]``. The abuse limits are off (:data:`NO_LIMITS`) unless
    ``limits``, which leaves them at keyguard's defaults.
    """

    def __init__(
        self,
        folder: Path,
        *,
        workers: int = 1,
        secret_key: str | None = SECRET,
        settings: Mapping[str, str] | None = None,
        options: Sequence[str] = (),
        limits: bool = False,
    ) -> None:
        self.folder = folder
        self.options = tuple(options)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.database = folder / "keyguard.db"
        self.env = {
            name: value for name, value in os.environ.items() if not name.startswith("KEYGUARD_")
        }
        self.env["KEYGUARD_DATABASE_URL"] = f"sqlite:///{self.database}"
        if not limits:
            self.env.update(NO_LIMITS)
        if secret_key is not None:
            self.env["KEYGUARD_SECRET_KEY"] = secret_key
        self.env.update(settings or {})
        self.port = 0
        self.runs = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The server process's id, which is also its process group's (and its workers')."""
        return self._require_process().pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def stdout(self) -> str:
        """Everything the current (or last) run printed to stdout."""
        return self._log("stdout")

    @property
    def stderr(self) -> str:
        return self._log("stderr")

    def _log(self, stream: str) -> str:
        path = self.folder / f"serve-{self.runs}.{stream}"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Start a new run on a fresh port; return once ``/healthz`` answers 200
        and every worker has started."""
        self.spawn()
        self._wait_until_healthy(timeout)
        return self

    def spawn(self, stdout: int | None = None) -> "subprocess.Popen[bytes]":
        """Start a new run on a fresh port without waiting for it; what it prints goes
        to the run's log, or to the file descriptor ``stdout`` (a terminal, say)."""
        if self.running:
            raise ServerError("The server is already running.")
        self.runs += 1
        self.port = free_port()
        command = [
            *keyguard_command(),
            *("serve", "--host", HOST, "--port", str(self.port), "--workers", str(self.workers)),
            *self.options,
        ]
        with (
            (self.folder / f"serve-{self.runs}.stdout").open("wb") as log,
            (self.folder / f"serve-{self.runs}.stderr").open("wb") as stderr,
        ):
            self._process = subprocess.Popen(
                command,
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log if stdout is None else stdout,
                stderr=stderr,
                start_new_session=True,
            )
        return self._process

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Until the run ends by itself; its exit status."""
        return self._require_process().wait(timeout)

    def _wait_until_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    self._fail("exited before it answered /healthz")
                with suppress(httpx.TransportError):
                    if client.get("/healthz").status_code == 200 and self._all_workers_up():
                        return
                time.sleep(0.02)
        self._fail(f"did not answer /healthz with 200 within {timeout:g} s")

    def _all_workers_up(self) -> bool:
        # /healthz answers as soon as one worker is up; the others say so in the log.
        return self.stderr.count("Application startup complete.") >= self.workers

    def _fail(self, what: str) -> None:
        self.kill()
        raise ServerError(f"keyguard serve {what}.\n--- stderr ---\n{self.stderr}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, as a process supervisor stops it; the exit status."""
        process = self._require_process()
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServerError(f"keyguard serve ignored SIGTERM for {timeout:g} s.") from None
        self._kill_group()  # workers must not outlive their supervisor
        return status

    def kill(self) -> int:
        """SIGKILL to the server and its workers at once, as a crash or OOM kill would."""
        process = self._require_process()
        self._kill_group()
        return process.wait(STOP_TIMEOUT)

    def _kill_group(self) -> None:
        process = self._require_process()
        # The process leads its own session, so its pid is the group id.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise ServerError("The server was never started.")
        return self._process

    def cli(self, *args: str) -> str:
        """Run a ``keyguard`` command with this server's environment; its stdout."""
        done = subprocess.run(
            [*keyguard_command(), *args],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise ServerError(f"keyguard {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def create_account(self, name: str) -> dict[str, Any]:
        """``keyguard accounts create NAME --json``: the account and its first key."""
        created: dict[str, Any] = json.loads(self.cli("accounts", "create", name, "--json"))
        return created

    def client(self, token: str | None = None) -> httpx.Client:
        """A client of the current run, presenting ``token`` if one is given."""
        headers = bearer(token) if token is not None else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10)

    def create_tenant(self, name: str) -> Tenant:
        """:meth:`create_account`, as a :class:`Tenant`."""
        created = self.create_account(name)
        key = created["api_key"]
        return Tenant(int(created["account"]["id"]), int(key["id"]), str(key["value"]))


def create_key(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    """A new key, made through ``api`` (a :meth:`KeyguardServer.client` presenting a
    full-access key): ``fields`` on top of the label "test key"; the key object answered."""
    answer = api.post("/v1/api-keys", json={"label": "test key", **fields})
    assert answer.status_code == 200, answer.text
    key: dict[str, Any] = answer.json()
    return key


def list_keys(api: httpx.Client) -> list[dict[str, Any]]:
    """The keys of the account whose key ``api`` presents."""
    answer = api.get("/v1/api-keys")
    assert answer.status_code == 200, answer.text
    keys: list[dict[str, Any]] = answer.json()
    return keys


class Servers:
    """Hands out :class:`KeyguardServer` instances and ends them all on exit."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._servers: list[KeyguardServer] = []

    def __call__(
        self,
        name: str = "server",
        *,
        workers: int = 1,
        secret_key: str | None = SECRET,
        settings: Mapping[str, str] | None = None,
        options: Sequence[str] = (),
    ) -> KeyguardServer:
        """A server over a new database in ``root/name``, not yet started."""
        server = KeyguardServer(
            self._root / name,
            workers=workers,
            secret_key=secret_key,
            settings=settings,
            options=options,
        )
        self._servers.append(server)
        return server

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for server in self._servers:
            if server.runs:
                server.kill()


def two_instances(
    servers: Servers, workers: int, settings: Mapping[str, str]
) -> tuple[KeyguardServer, KeyguardServer, str]:
    """Instances A and B on one database (``settings`` names it), started together, and
    the full-access key of an account ``acme`` created through A."""
    a = servers("a", workers=workers, settings=settings)
    b = servers("b", workers=workers, settings=settings)
    admin: str = a.create_account("acme")["api_key"]["value"]
    with ThreadPoolExecutor(2) as starting:
        for started in [starting.submit(a.start), starting.submit(b.start)]:
            started.result()
    return a, b, admin


class Worker(NamedTuple):
    """One worker process, reached over a keep-alive connection of its own."""

    pid: str
    client: httpx.Client
    metrics_token: str | None = None

    def still_same(self) -> None:
        assert worker_pid(self.client, self.metrics_token) == self.pid, (
            "the connection moved to another worker"
        )


def worker_pid(client: httpx.Client, metrics_token: str | None = None) -> str:
    """The pid of the worker that serves ``client``'s connection, from its ``/metrics``."""
    headers = {"Authorization": f"Bearer {metrics_token}"} if metrics_token else {}
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, f"/metrics answered {answer.status_code}"
    match = WORKER_PID.search(answer.text)
    assert match is not None, "/metrics names no worker pid"
    return match.group(1)


@contextmanager
def workers_of(server: KeyguardServer) -> Iterator[list[Worker]]:
    """A pinned connection to each worker of ``server``.

    The kernel hands each new connection to some worker, and often one worker
    takes them all; connections are opened until every worker has one. One
    connection each (``max_connections=1``) keeps every request on its worker
    while the connection stays alive: check with :meth:`Worker.still_same`.
    """
    token = server.env.get("KEYGUARD_METRICS_TOKEN")
    found: dict[str, Worker] = {}
    deadline = time.monotonic() + PIN_TIMEOUT
    with ExitStack() as connections:
        while len(found) < server.workers:
            assert time.monotonic() < deadline, f"reached only workers {sorted(found)}"
            client = connections.enter_context(
                httpx.Client(
                    base_url=server.base_url, limits=httpx.Limits(max_connections=1), timeout=5
                )
            )
            pid = worker_pid(client, token)
            found.setdefault(pid, Worker(pid, client, token))
        yield list(found.values())


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from ``/proc``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after it.
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found
