"""A real ``keyguard serve`` process on a fresh SQLite database.

:func:`running_keyguard` creates a temporary folder, an account with its
full-access key (through the CLI, as an operator would), and a server on a free
127.0.0.1 port; on the way out it stops the server's whole process group, even
when the benchmark failed, and removes the folder.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ServerError(RuntimeError):
    """keyguard could not be prepared or did not come up."""


@dataclass(frozen=True, slots=True)
class Tenant:
    """An account and its first, full-access key."""

    account_id: int
    key_id: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True, slots=True)
class Server:
    """A running keyguard and the tenant the benchmark acts as."""

    base_url: str
    tenant: Tenant
    workers: int

    def url(self, path: str) -> str:
        return self.base_url + path


def keyguard_command() -> list[str]:
    """The ``keyguard`` console script beside this interpreter, else ``python -m keyguard``."""
    script = Path(sys.executable).with_name("keyguard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "keyguard"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def environment(folder: Path) -> dict[str, str]:
    """This process's environment, minus any KEYGUARD_* of the developer's own."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KEYGUARD_")}
    env["KEYGUARD_DATABASE_URL"] = f"sqlite:///{folder / 'keyguard.db'}"
    env["KEYGUARD_SECRET_KEY"] = secrets.token_urlsafe(48)
    return env


def create_tenant(env: dict[str, str], name: str) -> Tenant:
    """Migrate the database and create an account, with ``keyguard accounts create``."""
    command = [*keyguard_command(), "accounts", "create", name, "--json"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:
        raise ServerError(f"keyguard accounts create failed: {completed.stderr.strip()}")
    created = json.loads(completed.stdout)
    key = created["api_key"]
    return Tenant(int(created["account"]["id"]), int(key["id"]), str(key["value"]))


@contextmanager
def running_keyguard(workers: int = 1) -> Iterator[Server]:
    """A keyguard server with one account, stopped and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="keyguard-bench-") as folder:
        env = environment(Path(folder))
        tenant = create_tenant(env, "bench")
        port = free_port()
        log_path = Path(folder) / "server.log"
        command = [*keyguard_command(), "serve", "--host", HOST, "--port", str(port)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*command, "--workers", str(workers)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches workers
            )
        try:
            server = Server(f"http://{HOST}:{port}", tenant, workers)
            wait_until_healthy(process, server, log_path)
            yield server
        finally:
            stop(process)


def wait_until_healthy(process: subprocess.Popen[bytes], server: Server, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"keyguard serve exited with {process.returncode}:\n{tail(log)}")
        with suppress(httpx.HTTPError):
            if httpx.get(server.url("/healthz"), timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise ServerError(f"keyguard serve was not healthy after {START_TIMEOUT:.0f} s:\n{tail(log)}")


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
