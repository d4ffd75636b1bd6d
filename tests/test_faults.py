"""keyguard on PostgreSQL when the database, or keyguard itself, fails.

Each test runs its own throwaway cluster (``tests/postgres.py``), so it can stop
the database under a running ``keyguard serve`` and start it again.
"""

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Self

import httpx
import pytest

from keyguard.domain.keys import generate
from tests.conftest import bearer, missing
from tests.postgres import ClusterError, PostgresCluster, server_binaries
from tests.server import (
    HOST,
    SECRET,
    KeyguardServer,
    Servers,
    create_key,
    free_port,
    keyguard_command,
)

pytestmark = pytest.mark.slow

UNAVAILABLE = {"success": False, "message": "Service temporarily unavailable"}
SETTLE_TIMEOUT = 5.0  # for what happens "within a few seconds"
ACKNOWLEDGED_BEFORE_KILL = 30


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    try:
        server_binaries()
    except ClusterError as error:
        missing(str(error))
    with PostgresCluster.initdb() as created:
        yield created.start()


class Seen(NamedTuple):
    """What a proxy learns from one ``/auth/forward`` answer."""

    status: int
    key_id: str | None
    body: bytes


def forward(client: httpx.Client, token: str, method: str, uri: str) -> Seen:
    """Ask ``/auth/forward`` as nginx's ``auth_request`` does."""
    answer = client.get(
        "/auth/forward",
        headers={**bearer(token), "X-Original-Method": method, "X-Original-URI": uri},
    )
    return Seen(answer.status_code, answer.headers.get("x-keyguard-key-id"), answer.content)


def health(client: httpx.Client) -> dict[str, Any]:
    answer = client.get("/healthz")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def wait_for(what: str, condition: Callable[[], bool], timeout: float = SETTLE_TIMEOUT) -> float:
    """Poll until ``condition()`` holds; the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:g} s"
        time.sleep(0.02)
    return time.monotonic() - started


def settings_of(keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Key objects without ``last_used_at``, which every allowed request moves on."""
    return [{name: value for name, value in key.items() if name != "last_used_at"} for key in keys]


def gauges(client: httpx.Client, name: str) -> list[float]:
    text = client.get("/metrics").text
    return [float(value) for value in re.findall(rf"^{name}\{{.*\}} (\S+)$", text, re.M)]


def database_up_gauges(client: httpx.Client) -> list[float]:
    return gauges(client, "keyguard_database_up")


def snapshot_keys_gauges(client: httpx.Client) -> list[float]:
    return gauges(client, "keyguard_snapshot_keys")


class Instance(NamedTuple):
    """A running ``keyguard serve`` on the cluster, with clients of its API."""

    server: KeyguardServer
    account_id: int
    client: httpx.Client  # no key of its own: for /auth/forward, /healthz, /metrics
    management: httpx.Client  # as the account's full-access key


@pytest.fixture
def instance(cluster: PostgresCluster, servers: Servers) -> Iterator[Instance]:
    server = servers("keyguard", settings={"KEYGUARD_DATABASE_URL": cluster.url})
    created = server.create_account("acme")
    server.start()
    with server.client() as client, server.client(created["api_key"]["value"]) as management:
        yield Instance(server, created["account"]["id"], client, management)


def test_database_outage_keeps_decisions_answers_503_and_recovers_without_restart(
    cluster: PostgresCluster, instance: Instance
) -> None:
    client, management = instance.client, instance.management
    full = create_key(management, label="full access")
    reader = create_key(management, label="reader", scopes_enabled=True, messages={"allow": "read"})
    probes = [
        (full["value"], "POST", "/v3/messages"),
        (reader["value"], "GET", "/v3/messages?page=2"),
        (reader["value"], "POST", "/v3/messages"),
        (generate("kg"), "GET", "/v3/messages"),  # well-formed, never stored
    ]
    before = [forward(client, *probe) for probe in probes]
    assert [seen.status for seen in before] == [200, 200, 403, 401]
    keys_before = snapshot_keys_gauges(client)
    listed_before = settings_of(management.get("/v1/api-keys").json())

    cluster.stop()
    wait_for("/healthz to say unreachable", lambda: database_state(client) == "unreachable")

    for _round in range(5):
        assert [forward(client, *probe) for probe in probes] == before
    refused = {
        "list": management.get("/v1/api-keys"),
        "get": management.get(f"/v1/api-keys/{reader['id']}"),
        "create": management.post("/v1/api-keys", json={"label": "during the outage"}),
        "update": management.patch(f"/v1/api-keys/{reader['id']}", json={"label": "renamed"}),
        "deactivate": management.patch(f"/v1/api-keys/{full['id']}/deactivate"),
        "delete": management.delete(f"/v1/api-keys/{full['id']}"),
    }
    for call, answer in refused.items():
        assert (call, answer.status_code, answer.json()) == (call, 503, UNAVAILABLE)
    assert snapshot_keys_gauges(client) == keys_before
    assert database_up_gauges(client) == [0.0]

    cluster.start()
    recovery = wait_for(
        "management to answer again", lambda: management.get("/v1/api-keys").status_code == 200
    )
    wait_for("/healthz to say ok", lambda: database_state(client) == "ok")
    assert health(client)["snapshot_age_seconds"] < 1.0
    print(f"management answered {recovery:.3f} s after PostgreSQL accepted connections again")

    # Nothing acknowledged before the outage is lost, and nothing refused during it happened.
    assert settings_of(management.get("/v1/api-keys").json()) == listed_before
    assert [forward(client, *probe) for probe in probes] == before
    assert database_up_gauges(client) == [1.0]


def test_after_an_outage_new_changes_are_enforced_and_uses_during_it_are_written(
    cluster: PostgresCluster, instance: Instance
) -> None:
    client, management = instance.client, instance.management
    reader = create_key(management, label="reader", scopes_enabled=True, messages={"allow": "read"})
    full = create_key(management, label="full access")
    used = create_key(management, label="used only during the outage")
    cluster.stop()
    wait_for("/healthz to say unreachable", lambda: database_state(client) == "unreachable")
    used_at = datetime.now(UTC).replace(microsecond=0)
    assert forward(client, used["value"], "GET", "/v3/messages").status == 200
    answered_at = datetime.now(UTC)
    cluster.start()
    wait_for("/healthz to say ok", lambda: database_state(client) == "ok")

    granted = management.patch(
        f"/v1/api-keys/{reader['id']}", json={"messages": {"allow": "write"}}
    )
    # The command line is another process: only the change feed tells the server of it.
    instance.server.cli("keys", "delete", str(full["id"]), "--account", str(instance.account_id))

    assert granted.status_code == 200, granted.text
    assert forward(client, reader["value"], "POST", "/v3/messages").status == 200
    revoked = wait_for(
        "a key deleted by another process to be refused",
        lambda: forward(client, full["value"], "POST", "/v3/messages").status == 401,
        timeout=1.0,
    )
    print(f"a key deleted by another process was refused {revoked:.3f} s after the delete")
    # The use noted while the database was down is written once it is back.
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while (last_used := stored_last_use(instance, used["id"])) is None:
        assert time.monotonic() < deadline, "the use during the outage never reached the database"
    assert used_at <= last_used <= answered_at, (last_used, used_at)  # the second of the use


def stored_last_use(instance: Instance, key_id: int) -> datetime | None:
    """``last_used_at`` as the database holds it, read by another process."""
    listed = json.loads(
        instance.server.cli("keys", "list", "--account", str(instance.account_id), "--json")
    )
    [key] = [key for key in listed if key["id"] == key_id]
    return None if key["last_used_at"] is None else datetime.fromisoformat(key["last_used_at"])


def database_state(client: httpx.Client) -> str:
    """``/healthz``'s view of the database; it must answer 200 either way."""
    body = health(client)
    assert body["success"] is True, body
    state: str = body["database"]
    return state


class CreateBurst:
    """A thread that creates keys as fast as the server answers, until it stops answering."""

    def __init__(self, server: KeyguardServer, token: str) -> None:
        self._client = httpx.Client(base_url=server.base_url, headers=bearer(token), timeout=10)
        # Written by the thread; read once it has ended.
        self.acknowledged: dict[int, dict[str, Any]] = {}
        self.reached = threading.Event()
        self.refusals: list[httpx.Response] = []
        self.failures: list[Exception] = []
        self._thread = threading.Thread(target=self._create)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._thread.join(timeout=30)
        self._client.close()

    def _create(self) -> None:
        for number in range(1, 10_000):
            try:
                answer = self._client.post("/v1/api-keys", json={"label": f"burst {number}"})
            except httpx.TransportError as error:
                self.failures.append(error)
                return
            if answer.status_code != 200:
                self.refusals.append(answer)
                return
            key = answer.json()
            self.acknowledged[key["id"]] = key
            if len(self.acknowledged) >= ACKNOWLEDGED_BEFORE_KILL:
                self.reached.set()


def test_every_create_acknowledged_before_a_sigkill_is_listed_and_authenticates_after_restart(
    cluster: PostgresCluster, servers: Servers
) -> None:
    server = servers("crash", settings={"KEYGUARD_DATABASE_URL": cluster.url})
    admin = server.create_account("acme")["api_key"]["value"]
    server.start()

    with CreateBurst(server, admin) as burst:
        assert burst.reached.wait(timeout=20), "the burst of creates did not get going"
        server.kill()
    server.start()

    assert not burst.refusals, [answer.text for answer in burst.refusals]
    assert burst.failures, "the kill did not land in the middle of a create"
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        listed = client.get("/v1/api-keys", headers=bearer(admin)).json()
        by_id = {key["id"]: key for key in listed}
        missing = sorted(burst.acknowledged.keys() - by_id.keys())
        assert not missing, f"acknowledged keys lost by the kill: {missing}"
        for key_id, key in burst.acknowledged.items():
            assert by_id[key_id]["label"] == key["label"]
            seen = forward(client, key["value"], "POST", "/v3/messages")
            assert (key_id, seen.status) == (key_id, 200)


def test_serve_with_an_unreachable_database_says_so_in_one_line_and_exits(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://keyguard:pa55-w0rd@{HOST}:{port}/keyguard"
    env = {name: value for name, value in os.environ.items() if not name.startswith("KEYGUARD_")}

    done = subprocess.run(
        [*keyguard_command(), "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env={**env, "KEYGUARD_DATABASE_URL": url, "KEYGUARD_SECRET_KEY": SECRET},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    [line] = lines
    assert re.search(rf"postgresql(\+psycopg)?://keyguard:\*\*\*@{HOST}:{port}/keyguard\b", line)
    assert "check" in line.lower()
    assert "KEYGUARD_DATABASE_URL" in line
    assert "pa55-w0rd" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
