"""Real ``keyguard serve`` processes on a fresh database (SQLite unless a URL is given).

The servers themselves are the tests' (:class:`tests.server.KeyguardServer`): one
way to start, wait for and stop keyguard, for the suite and the benchmarks alike.
:func:`running_keyguard` creates a temporary folder, an account with its
full-access key (through the CLI, as an operator would), and a server on a free
127.0.0.1 port; on the way out it stops the server's whole process group, even
when the benchmark failed, and removes the folder. Its two halves serve more
than one instance on one database: :func:`deployed` prepares the database,
:func:`serving` starts each instance on it. Unlike the tests' servers, these keep
keyguard's abuse limits unless the benchmark's settings turn them off
(:data:`tests.server.NO_LIMITS`).
"""

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.server import (
    HOST,
    KeyguardServer,
    ServerError,
    Tenant,
    bearer,
    children,
    free_port,
)

BENCHMARKS_ROOT = Path(__file__).resolve().parent.parent  # where `benchmarks` imports from
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Server:
    """A running keyguard and the tenant the benchmark acts as."""

    base_url: str
    tenant: Tenant
    workers: int
    pid: int  # the `keyguard serve` process; with one worker, the worker itself

    def url(self, path: str) -> str:
        return self.base_url + path


@dataclass(frozen=True, slots=True)
class Deployment:
    """A migrated database with one account, the settings that reach it, and a folder
    for the servers' logs."""

    settings: dict[str, str]  # KEYGUARD_* variables, KEYGUARD_DATABASE_URL among them
    secret_key: str
    tenant: Tenant
    folder: Path

    @property
    def database_url(self) -> str:
        return self.settings["KEYGUARD_DATABASE_URL"]

    def server(self, workers: int = 1) -> KeyguardServer:
        """A server on this database (not yet started), with a log folder of its own."""
        folder = Path(tempfile.mkdtemp(prefix="server-", dir=self.folder))
        return KeyguardServer(
            folder,
            workers=workers,
            secret_key=self.secret_key,
            settings=self.settings,
            limits=True,  # as the benchmark's settings leave them
        )


@contextmanager
def running_keyguard(
    workers: int = 1, database_url: str | None = None, settings: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """A keyguard server with one account, stopped and removed afterwards."""
    with (
        deployed(database_url, settings) as deployment,
        serving(deployment, workers) as server,
    ):
        yield server


@contextmanager
def deployed(
    database_url: str | None = None, settings: Mapping[str, str] | None = None
) -> Iterator[Deployment]:
    """A temporary folder and a migrated database (SQLite in the folder by default)."""
    with tempfile.TemporaryDirectory(prefix="keyguard-bench-") as name:
        folder = Path(name)
        chosen = {
            "KEYGUARD_DATABASE_URL": database_url or f"sqlite:///{folder / 'keyguard.db'}",
            **(settings or {}),
        }
        secret_key = secrets.token_urlsafe(48)
        setup = KeyguardServer(folder / "setup", secret_key=secret_key, settings=chosen)
        tenant = setup.create_tenant("bench")  # `keyguard accounts create` migrates first
        yield Deployment(chosen, secret_key, tenant, folder)


@contextmanager
def serving(
    deployment: Deployment,
    workers: int = 1,
    *,
    keys: int | None = None,
    timeout: float = START_TIMEOUT,
) -> Iterator[Server]:
    """One ``keyguard serve`` on the deployment's database, stopped on the way out.

    It is ready when every worker has started and ``/healthz`` answers 200, and,
    if ``keys`` is given, when its snapshot holds at least that many keys.
    """
    server = deployment.server(workers)
    deadline = time.monotonic() + timeout
    try:
        server.start(timeout)
        token = deployment.settings.get("KEYGUARD_METRICS_TOKEN")
        while keys is not None and snapshot_keys(server.base_url, token) < keys:
            if time.monotonic() > deadline:
                raise ServerError(
                    f"keyguard serve did not hold {keys:,} keys after {timeout:.0f} s"
                )
            time.sleep(0.05)
        yield Server(server.base_url, deployment.tenant, workers, server.pid)
    finally:
        if server.running:
            server.stop()


def snapshot_keys(base_url: str, metrics_token: str | None) -> int:
    """The keys in the snapshot of the worker that answers, from its ``/metrics``."""
    headers = bearer(metrics_token) if metrics_token else {}
    response = httpx.get(base_url + "/metrics", headers=headers, timeout=1.0)
    response.raise_for_status()
    return counted_keys(response.text)


def counted_keys(metrics: str) -> int:
    """``keyguard_snapshot_keys`` in the text of a worker's ``/metrics``."""
    found = re.search(r"^keyguard_snapshot_keys\{.*\} (\S+)$", metrics, re.MULTILINE)
    if found is None:
        raise ServerError("/metrics carries no keyguard_snapshot_keys")
    return int(float(found.group(1)))


def uvicorn_command(app: str, port: int, workers: int, *, factory: bool = False) -> list[str]:
    """uvicorn serving ``app`` as ``keyguard serve`` runs keyguard (see ``keyguard.cli``):
    the same workers, no access log, no ``Server`` header."""
    command = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(BENCHMARKS_ROOT)]
    command += ["--host", HOST, "--port", str(port), "--workers", str(workers)]
    command += ["--no-access-log", "--no-server-header"]  # loop and http: "auto", as keyguard's
    return [*command, "--factory"] if factory else command


@contextmanager
def running_asgi(
    app: str,
    workers: int = 1,
    *,
    factory: bool = False,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/",
) -> Iterator[str]:
    """Another ASGI app (``module:attribute``) under the server program keyguard uses.

    Yields its base URL once ``ready_path`` answers with any status below 500.
    """
    port = free_port()
    command = uvicorn_command(app, port, workers, factory=factory)
    with running_program(app, command, port, env, ready_path) as base_url:
        yield base_url


def gunicorn_command(app: str, port: int, workers: int) -> list[str]:
    """gunicorn serving the WSGI ``app`` (``module:callable()`` for a factory) with sync
    workers, as Django projects are commonly deployed: no access log, the default
    keep-alive (sync workers close every connection after one response)."""
    command = [sys.executable, "-m", "gunicorn", "--chdir", str(BENCHMARKS_ROOT)]
    command += ["--bind", f"{HOST}:{port}", "--workers", str(workers), "--worker-class", "sync"]
    return [*command, "--log-level", "warning", app]


@contextmanager
def running_wsgi(
    app: str, workers: int = 1, *, env: Mapping[str, str] | None = None, ready_path: str = "/"
) -> Iterator[str]:
    """A WSGI app under gunicorn's sync workers; its base URL once ``ready_path`` answers."""
    port = free_port()
    command = gunicorn_command(app, port, workers)
    with running_program(app, command, port, env, ready_path) as base_url:
        yield base_url


@contextmanager
def running_program(
    name: str,
    command: list[str],
    port: int,
    env: Mapping[str, str] | None,
    ready_path: str,
) -> Iterator[str]:
    """A server program listening on ``port``, stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="keyguard-bench-server-") as folder:
        log_path = Path(folder) / "server.log"
        process = spawn(command, os.environ if env is None else env, log_path)
        try:
            base_url = f"http://{HOST}:{port}"
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise ServerError(f"{name} exited with {process.returncode}:\n{tail(log_path)}")
                with suppress(httpx.HTTPError):
                    if httpx.get(base_url + ready_path, timeout=1.0).status_code < 500:
                        break
                time.sleep(0.05)
            else:
                raise ServerError(
                    f"{name} did not answer in {START_TIMEOUT:.0f} s:\n{tail(log_path)}"
                )
            yield base_url
        finally:
            stop(process)


def spawn(command: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a server program with its output in ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches workers
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def worker_pids(server: Server) -> list[int]:
    """The processes that serve requests: uvicorn's spawned workers, or the server itself."""
    workers = [pid for pid in children(server.pid) if b"spawn_main" in _cmdline(pid)]
    return workers or [server.pid]


def memory_mib(pid: int) -> tuple[float, float]:
    """A process's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    rss, peak = (int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM"))
    return rss, peak


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
