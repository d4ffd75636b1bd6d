"""Lifecycle webhooks: every change arrives at a real receiver, signed, at least once, in order.

The receiver is a real HTTP server in the test that verifies every delivery with
``standardwebhooks``, as an operator's receiver would. Changes go through
keyguard's own HTTP API.
"""

import base64
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.testclient import TestClient

from keyguard.config import Settings, load_settings
from keyguard.domain.events import EVENT_ACTIONS, RETRY_CAP
from keyguard.errors import ConfigurationError
from keyguard.importing import Importer
from keyguard.runtime import Keyguard
from keyguard.storage import AuditQuery, open_store
from keyguard.webhooks import LEASE, POLL_INTERVAL, WebhookDeliverer, WebhookEndpoint
from tests.conftest import (
    CLIENT_IP,
    TEST_SECRET,
    Tenant,
    bearer,
)
from tests.readme import README, readme_blocks
from tests.server import HOST, KeyguardServer, Servers, create_key, free_port

SIGNING_SECRET = "whsec_" + base64.b64encode(b"webhook-signing-key-of-32-bytes!").decode()
ADMIN_TOKEN = "operator-" + "7" * 32
OPERATOR = bearer(ADMIN_TOKEN)
KEYS = "/v1/api-keys"
ARRIVAL_TIMEOUT = 10.0
WARNING = timedelta(days=7)  # KEYGUARD_EXPIRY_WARNING's default


@dataclass(frozen=True)
class Delivery:
    """One request the receiver took: verified, with when it came."""

    webhook_id: str
    event: dict[str, Any]
    body: str
    headers: dict[str, str]
    at: float  # time.monotonic()

    @property
    def type(self) -> str:
        kind: str = self.event["type"]
        return kind

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.event["data"]
        return data


class Receiver:
    """A webhook endpoint on 127.0.0.1 that can go down and come back on its port.

    Every request is verified with ``standardwebhooks`` as a receiver would;
    one that fails verification is kept in ``forged`` and answered 400.
    ``holding`` makes it take requests but answer none until released.
    """

    def __init__(self, secret: str = SIGNING_SECRET) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/hooks"
        self.received: list[Delivery] = []
        self.forged: list[str] = []
        self.holding = threading.Event()
        self._released = threading.Event()
        self._verifier = Webhook(secret)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = receiver.take(body, headers)
                if receiver.holding.is_set():
                    receiver._released.wait(30)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Stop listening: deliveries meet a refused connection."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def release(self) -> None:
        """Answer held requests, and every later one at once."""
        self.holding.clear()
        self._released.set()

    def take(self, body: str, headers: dict[str, str]) -> int:
        try:
            event = self._verifier.verify(body, headers)
        except WebhookVerificationError:
            self.forged.append(body)
            return 400
        with self._lock:
            delivery = Delivery(headers["webhook-id"], event, body, headers, time.monotonic())
            self.received.append(delivery)
        return 204

    def events(self) -> list[Delivery]:
        """Each event once, in the order of its first arrival."""
        with self._lock:
            first: dict[str, Delivery] = {}
            for delivery in self.received:
                first.setdefault(delivery.webhook_id, delivery)
            return list(first.values())

    def wait_for(self, count: int, timeout: float = ARRIVAL_TIMEOUT) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(self.events()) < count:
            assert time.monotonic() < deadline, (
                f"{len(self.events())} of {count} events came: "
                f"{[(e.type, e.data['key_id']) for e in self.events()]}"
            )
            time.sleep(0.05)
        return self.events()

    def duplicates(self) -> int:
        with self._lock:
            return len(self.received) - len({d.webhook_id for d in self.received})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    listening = Receiver()
    listening.up()
    yield listening
    listening.release()
    listening.down()


@pytest.fixture
def settings(database_url: str, receiver: Receiver) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=TEST_SECRET,
        refresh_interval=0.05,
        usage_flush_interval=0.05,
        admin_token=SecretStr(ADMIN_TOKEN),
        webhook_url=receiver.url,
        webhook_secret=SecretStr(SIGNING_SECRET),
    )


def ok(response: httpx.Response | Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def audit_ids(deliveries: list[Delivery]) -> list[int]:
    return [delivery.data["id"] for delivery in deliveries]


def in_order_per_key(deliveries: list[Delivery]) -> bool:
    """Whether each key's events first arrived in the order they were committed."""
    by_key: dict[int, list[int]] = {}
    for delivery in deliveries:
        by_key.setdefault(delivery.data["key_id"], []).append(delivery.data["id"])
    return all(ids == sorted(ids) for ids in by_key.values())


# -- what arrives ----------------------------------------------------------------------------


def test_each_change_through_the_api_arrives_signed_as_its_lifecycle_event(
    tenant: Tenant, client: TestClient, receiver: Receiver
) -> None:
    key = ok(client.post(KEYS, json={"label": "ci"}, headers=tenant.headers))
    path = f"{KEYS}/{key['id']}"
    change = {"label": "ci 2", "restricted": True, "permitted_ips": ["203.0.113.0/24"]}
    ok(client.patch(path, json=change, headers=tenant.headers))
    ok(client.patch(f"{path}/deactivate", headers=tenant.headers))
    ok(client.patch(f"{path}/activate", headers=tenant.headers))
    ok(client.delete(path, headers=tenant.headers))
    account = f"/admin/v1/accounts/{tenant.account_id}"
    ok(client.post(f"{account}/suspend", headers=OPERATOR))
    ok(client.post(f"{account}/resume", headers=OPERATOR))
    ok(client.delete(account, headers=OPERATOR))

    events = receiver.wait_for(8)

    assert [(event.type, event.data["action"]) for event in events] == [
        ("key.created", "key.create"),
        ("key.updated", "key.update"),
        ("key.updated", "key.deactivate"),
        ("key.updated", "key.activate"),
        ("key.deleted", "key.delete"),
        ("account.suspended", "account.suspend"),
        ("account.resumed", "account.resume"),
        ("account.deleted", "account.delete"),
    ]
    assert [event.webhook_id for event in events] == [f"evt_{i}" for i in audit_ids(events)]
    assert audit_ids(events) == sorted(audit_ids(events))
    assert {event.data["account_id"] for event in events} == {tenant.account_id}
    assert [event.data["key_id"] for event in events[:5]] == [key["id"]] * 5
    assert events[1].data["before"]["label"] == "ci"
    assert events[1].data["after"]["permitted_ips"] == ["203.0.113.0/24"]
    actor = {"type": "key", "key_id": tenant.key_id, "ip": CLIENT_IP}
    assert events[0].data["actor"] == actor
    assert events[5].data["actor"] == {"type": "operator", "key_id": None, "ip": CLIENT_IP}
    assert events[5].data["after"] == {"status": "suspended"}
    for event in events:
        assert key["value"] not in event.body
        assert tenant.token not in event.body
        assert key["value"][-4:] not in event.body  # not even the tail a masked key shows
    assert receiver.forged == []
    assert receiver.duplicates() == 0


def test_each_import_batch_arrives_as_one_event_with_counts_and_no_secret(
    keyguard: Keyguard,
    tenant: Tenant,
    client: TestClient,  # noqa: ARG001 - the app it runs delivers the events
    receiver: Receiver,
) -> None:
    values = [f"legacy_{index}" for index in range(3)]
    importer = Importer(
        keyguard.store, keyguard.vault, keyguard.service.groups, tenant.account_id, batch=2
    )

    importer.run(enumerate(({"value": value} for value in values), start=1))

    events = receiver.wait_for(2)
    assert [(event.type, event.data["action"]) for event in events] == [
        ("key.imported", "key.import"),
        ("key.imported", "key.import"),
    ]
    assert [event.data["after"]["imported"] for event in events] == [2, 1]
    assert {event.data["actor"]["type"] for event in events} == {"cli"}
    for event in events:
        assert not any(value in event.body for value in values)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_event_is_the_audit_record_as_the_audit_log_shows_it(
    tenant: Tenant, client: TestClient, receiver: Receiver
) -> None:
    key = ok(client.post(KEYS, json={"label": "sms bot"}, headers=tenant.headers))

    [created] = receiver.wait_for(1)

    occurred = created.data["occurred_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", occurred)
    assert created.event == {
        "type": "key.created",
        "timestamp": occurred,
        "data": {
            "id": created.data["id"],
            "account_id": tenant.account_id,
            "occurred_at": occurred,
            "action": "key.create",
            "key_id": key["id"],
            "actor": {"type": "key", "key_id": tenant.key_id, "ip": CLIENT_IP},
            "before": None,
            "after": {
                "label": "sms bot",
                "active": True,
                "restricted": False,
                "permitted_ips": [],
                "scopes_enabled": False,
                "scopes": {},
                "expires_at": None,
                "ratelimit": None,
                "remaining": None,
                "refill": None,
            },
        },
    }
    trail = ok(client.get("/v1/audit-log", headers=tenant.headers))["items"]
    assert created.data in trail


def test_a_key_is_announced_expiring_at_once_within_the_warning_and_expired_when_it_passes(
    tenant: Tenant, client: TestClient, receiver: Receiver
) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    expires_at = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    key = ok(client.post(KEYS, json={"label": "brief", "expires_at": expires_at},
                         headers=tenant.headers))  # fmt: skip

    created, expiring = receiver.wait_for(2)
    assert (created.type, expiring.type) == ("key.created", "key.expiring")
    [expired] = receiver.wait_for(3, timeout=10)[2:]
    arrived = datetime.now(UTC)

    assert expired.type == "key.expired"
    assert [event.data["key_id"] for event in (expiring, expired)] == [key["id"]] * 2
    assert expired.data["after"]["expires_at"] == expires_at
    assert expired.data["actor"] == {"type": "keyguard", "key_id": None, "ip": None}
    assert arrived - expires < timedelta(seconds=2)  # a sweep a second, then delivery
    time.sleep(1.2)  # sweeps go on, one a second: each notice is given once
    assert len(receiver.received) == 3


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_roll_announces_the_new_key_and_the_old_one_rolled_and_expiring(
    tenant: Tenant, client: TestClient, receiver: Receiver
) -> None:
    key = ok(client.post(KEYS, json={"label": "rolled"}, headers=tenant.headers))

    new = ok(client.post(f"{KEYS}/{key['id']}/roll", json={"grace_seconds": 3600},
                         headers=tenant.headers))  # fmt: skip

    events = receiver.wait_for(4)
    assert [(event.type, event.data["key_id"]) for event in events] == [
        ("key.created", key["id"]),
        ("key.created", new["id"]),
        ("key.rolled", key["id"]),
        ("key.expiring", key["id"]),  # its grace ends within KEYGUARD_EXPIRY_WARNING
    ]
    assert events[1].data["after"]["rolled_from"] == key["id"]
    assert events[2].data["after"]["rolled_to"] == new["id"]
    for event in events:
        assert key["value"] not in event.body
        assert new["value"] not in event.body


def readme_receiver(test: str) -> Callable[[bytes, dict[str, str]], int]:
    """The ``handle`` function of the README's receiver example, which ``test`` runs."""
    blocks, _problems = readme_blocks(README.read_text("utf-8"))
    marker = f"tests/test_webhooks.py::{test}"
    [block] = [block for block in blocks if block.markers.get("tested-by") == marker]
    namespace: dict[str, Any] = {}
    exec(compile(block.text, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    handle: Callable[[bytes, dict[str, str]], int] = namespace["handle"]
    return handle


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_readme_receiver_takes_a_real_delivery_once_and_refuses_a_forged_one(
    tenant: Tenant,
    client: TestClient,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KEYGUARD_WEBHOOK_SECRET", SIGNING_SECRET)
    handle = readme_receiver(
        test_the_readme_receiver_takes_a_real_delivery_once_and_refuses_a_forged_one.__name__
    )
    key = ok(client.post(KEYS, json={"label": "readme"}, headers=tenant.headers))
    [delivery] = receiver.wait_for(1)
    body = delivery.body.encode()

    assert handle(body, delivery.headers) == 204
    assert handle(body, delivery.headers) == 204  # again: dropped as a repeat
    assert capsys.readouterr().out == f"key.created {key['id']}\n"
    forged = body.replace(b'"readme"', b'"forged"')
    assert handle(forged, delivery.headers) == 400
    other_secret = delivery.headers | {"webhook-signature": "v1,AAAA"}
    assert handle(body, other_secret) == 400


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_changes_made_before_webhooks_were_first_on_are_not_announced(
    keyguard: Keyguard, tenant: Tenant, receiver: Receiver, client: TestClient
) -> None:
    # ``tenant`` (an account and its key) was made before the app, and so delivery, started.
    assert keyguard.store.list_audit(AuditQuery(tenant.account_id))[1] == 2
    ok(client.post(KEYS, json={"label": "after"}, headers=tenant.headers))

    [event] = receiver.wait_for(1)
    time.sleep(2 * POLL_INTERVAL)

    assert event.data["after"]["label"] == "after"
    assert len(receiver.received) == 1


# -- when the receiver fails -----------------------------------------------------------------


def scrape(client: TestClient, name: str) -> float:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", client.get("/metrics").text, re.M)
    assert match is not None, f"/metrics has no {name}"
    return float(match.group(1))


def settles(client: TestClient, name: str, value: float, within: float = 2) -> None:
    deadline = time.monotonic() + within
    while (found := scrape(client, name)) != value:
        assert time.monotonic() < deadline, f"{name} is {found}, not {value}"
        time.sleep(0.1)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_receiver_down_for_a_while_gets_every_event_afterwards_in_order(
    tenant: Tenant, client: TestClient, receiver: Receiver
) -> None:
    receiver.down()
    keys = [ok(client.post(KEYS, json={"label": n}, headers=tenant.headers)) for n in "abc"]
    for key in keys:
        ok(client.patch(f"{KEYS}/{key['id']}", json={"label": "renamed"}, headers=tenant.headers))
    ok(client.delete(f"{KEYS}/{keys[0]['id']}", headers=tenant.headers))
    time.sleep(5)  # failed attempts at about 0, 1 and 3 s: the next is due at 7 s
    assert scrape(client, "keyguard_webhook_failures_total") >= 3
    assert scrape(client, "keyguard_webhook_backlog") == 7

    receiver.up()
    back = time.monotonic()
    events = receiver.wait_for(7, timeout=RETRY_CAP + 5)
    first, last = events[0].at - back, events[-1].at - back
    print(f"\nreceiver back: first event after {first:.1f} s, all 7 after {last:.1f} s")

    assert first <= RETRY_CAP
    assert audit_ids(events) == sorted(audit_ids(events))
    assert in_order_per_key(events)
    settles(client, "keyguard_webhook_deliveries_total", 7)
    settles(client, "keyguard_webhook_backlog", 0, within=6)  # counted every 5 s


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_failed_attempts_back_off_to_30_s_and_an_event_is_given_up_only_at_24_hours_old(
    keyguard: Keyguard, tenant: Tenant, receiver: Receiver
) -> None:
    """The retry schedule, on a clock of the test's own: 24 hours are not waited for."""
    clock = Clock()
    store = keyguard.store
    deliverer = WebhookDeliverer(store, endpoint(receiver), WARNING, clock)
    deliverer.step()  # the first claim: delivery starts after the tenant's creation
    receiver.down()
    created = clock.now
    first = ok_key(keyguard, tenant, "first")

    def attempt_when_due() -> datetime:
        """Step just before the next attempt is due (nothing happens), then when it is."""
        delivery = store.claim_delivery(deliverer.owner, clock.now, LEASE)
        assert delivery is not None
        if delivery.retry_at is not None and delivery.retry_at > clock.now:
            failures = deliverer.failures
            clock.now = delivery.retry_at - timedelta(milliseconds=100)
            deliverer.step()
            assert deliverer.failures == failures, "attempted before it was due"
            clock.now = delivery.retry_at
        deliverer.step()
        return clock.now

    attempts = [attempt_when_due() for _ in range(9)]
    waits = [(later - earlier).total_seconds() for earlier, later in pairwise(attempts)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    clock.now = created + timedelta(hours=24) - timedelta(seconds=10)
    attempt_when_due()
    assert (deliverer.failures, deliverer.dropped) == (10, 0)  # still retried at 23:59:50
    second = ok_key(keyguard, tenant, "second")  # waits behind the first, as old by this clock
    clock.advance(30)
    attempt_when_due()  # fails at over 24 hours old: given up, and the next is tried once

    assert (deliverer.failures, deliverer.dropped) == (12, 2)
    receiver.up()
    third = ok_key(keyguard, tenant, "third")
    attempt_when_due()
    assert [delivery.data["key_id"] for delivery in receiver.events()] == [third]
    assert deliverer.delivered == 1
    assert first < second < third


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stopping_holder_hands_the_lease_over_at_once_and_a_dead_one_when_it_lapses(
    keyguard: Keyguard, tenant: Tenant, receiver: Receiver
) -> None:
    clock = Clock()
    one, other = (
        WebhookDeliverer(keyguard.store, endpoint(receiver), WARNING, clock) for _ in range(2)
    )
    one.start()
    other.step()
    ok_key(keyguard, tenant, "while one holds the lease")
    other.step()
    assert other.delivered == 0
    one.stop()  # releases the lease
    other.step()
    assert other.delivered == 1

    third = WebhookDeliverer(keyguard.store, endpoint(receiver), WARNING, clock)
    ok_key(keyguard, tenant, "while the other is dead")  # it never steps again
    clock.advance(LEASE.total_seconds() - 1)
    third.step()
    assert third.delivered == 0
    clock.advance(1)
    third.step()
    assert third.delivered == 1
    assert receiver.duplicates() == 0


def endpoint(receiver: Receiver) -> WebhookEndpoint:
    return WebhookEndpoint(receiver.url, SIGNING_SECRET)


def ok_key(keyguard: Keyguard, tenant: Tenant, label: str) -> int:
    return keyguard.service.create_key(tenant.account_id, {"label": label}).key.id


# -- configuration ---------------------------------------------------------------------------


def test_a_webhook_url_without_a_secret_stops_the_start_saying_how_to_make_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYGUARD_WEBHOOK_URL", "https://hooks.example.com/keyguard")

    with pytest.raises(ConfigurationError) as refused:
        load_settings()

    assert refused.value.message.startswith(
        "Invalid settings: KEYGUARD_WEBHOOK_SECRET: Value error, is required when "
        "KEYGUARD_WEBHOOK_URL is set"
    )
    assert "secrets.token_bytes(32)" in refused.value.message


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with whsec_"),
        ("whsec_MfKQ9r8GKYqrTwj!PD8ILPZIo2LaLaSw", "must be whsec_ followed by base64"),
        ("whsec_c2hvcnQ=", "must hold 24 to 64 bytes, not 5"),
    ],
    ids=["no_prefix", "not_base64", "too_short"],
)
def test_a_malformed_webhook_secret_stops_the_start_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, secret: str, problem: str
) -> None:
    monkeypatch.setenv("KEYGUARD_WEBHOOK_URL", "https://hooks.example.com/keyguard")
    monkeypatch.setenv("KEYGUARD_WEBHOOK_SECRET", secret)

    with pytest.raises(ConfigurationError) as refused:
        load_settings()

    assert f"KEYGUARD_WEBHOOK_SECRET: Value error, {problem}; make one with" in (
        refused.value.message
    )
    assert secret.removeprefix("whsec_") not in refused.value.message


def test_webhooks_are_off_without_a_url() -> None:
    runtime = Keyguard(Settings(database_url="memory://", secret_key=TEST_SECRET))
    assert runtime.webhooks is None


# -- crashes and instances -------------------------------------------------------------------


def webhook_settings(receiver: Receiver, **more: str) -> dict[str, str]:
    return {"KEYGUARD_WEBHOOK_URL": receiver.url, "KEYGUARD_WEBHOOK_SECRET": SIGNING_SECRET} | more


@pytest.mark.slow
def test_an_event_committed_but_not_acknowledged_when_keyguard_is_killed_arrives_after_restart(
    servers: Servers, receiver: Receiver
) -> None:
    server = servers(settings=webhook_settings(receiver))
    token = server.create_account("acme")["api_key"]["value"]
    server.start()
    receiver.holding.set()  # takes the request, answers nothing

    with server.client(token) as api:
        key = create_key(api, label="in flight")
    [taken] = receiver.wait_for(1)
    server.kill()  # SIGKILL while the receiver holds the request
    receiver.release()
    server.start()
    restarted = time.monotonic()
    deadline = restarted + LEASE.total_seconds() + 5
    while len(receiver.received) < 2:
        assert time.monotonic() < deadline, "the event was not delivered again after restart"
        time.sleep(0.05)
    again = receiver.received[1]
    print(f"\nredelivered {again.at - restarted:.1f} s after the restart")

    assert again.webhook_id == taken.webhook_id  # the receiver can tell it is the same event
    assert again.data["key_id"] == key["id"]
    assert again.body == taken.body


def lease_holder(database: str) -> int:
    """The pid of the process holding the delivery lease, from the database."""
    conninfo, _, options = database.partition("?")
    search_path = re.search(r"search_path%3D(\w+)", options)
    assert search_path is not None
    deadline = time.monotonic() + 5
    with psycopg.connect(conninfo, autocommit=True) as connection:
        while True:
            row = connection.execute(
                f'SELECT lease_owner FROM "{search_path[1]}".webhook_delivery'  # noqa: S608
            ).fetchone()
            if row is not None and row[0] is not None:
                return int(row[0].split(":")[1])
            assert time.monotonic() < deadline, "no process took the delivery lease"
            time.sleep(0.1)


class Writer(threading.Thread):
    """Creates and deletes keys through one server until stopped: a stream of events."""

    def __init__(self, server: KeyguardServer, token: str) -> None:
        super().__init__(daemon=True)
        self._server, self._token = server, token
        self.made: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with self._server.client(self._token) as api:
            while not self.stopping.is_set():
                key = create_key(api, label=f"stream {len(self.made)}")
                self.made.append(key["id"])
                ok(api.delete(f"{KEYS}/{key['id']}"))
                time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_instances_on_postgresql_deliver_every_event_when_the_holder_is_killed(
    servers: Servers, receiver: Receiver, database_url: str
) -> None:
    postgres = database_url
    settings = webhook_settings(receiver, KEYGUARD_DATABASE_URL=postgres)
    a = servers("a", workers=2, settings=settings)
    b = servers("b", workers=2, settings=settings)
    token = a.create_account("acme")["api_key"]["value"]
    starting = [threading.Thread(target=server.start) for server in (a, b)]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join()
    with a.client(token) as api_a, b.client(token) as api_b:
        made = [create_key((api_a, api_b)[n % 2], label=f"before {n}")["id"] for n in range(10)]
    receiver.wait_for(10)

    holder = lease_holder(postgres)  # a worker: its process group is its server's pid
    dying, surviving = (a, b) if os.getpgid(holder) == a.pid else (b, a)
    writer = Writer(surviving, token)
    writer.start()
    time.sleep(1)  # events flowing to the receiver from the holder
    dying.kill()
    killed = time.monotonic()
    time.sleep(2)
    writer.stopping.set()
    writer.join()
    total = 10 + 2 * len(writer.made)
    events = receiver.wait_for(total, timeout=LEASE.total_seconds() + 10)
    during = [event.at - killed for event in events if event.at > killed]
    print(
        f"\n{total} events, {receiver.duplicates()} duplicates; the first after the kill "
        f"{during[0]:.1f} s after it"
    )

    store = open_store(postgres)
    try:
        announced = store.pending_events(0, EVENT_ACTIONS, 10_000)
    finally:
        store.close()
    assert audit_ids(events) == [record.id for record in announced][1:]  # all but acme's key
    assert [e.data["key_id"] for e in events if e.type == "key.created"] == made + writer.made
    assert in_order_per_key(events)
    assert receiver.forged == []
    assert receiver.duplicates() <= 1  # at most the one in flight when the holder died
    time.sleep(2 * POLL_INTERVAL)
    assert len(receiver.events()) == total
