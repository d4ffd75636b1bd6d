"""Two keyguard instances on one PostgreSQL: what one is told, the other enforces.

Instances A and B, each ``keyguard serve --workers 2``, share a fresh schema on
the server named by ``KEYGUARD_TEST_POSTGRES_URL``. Changes go through A's API;
B's answers are watched worker by worker, each over a keep-alive connection
that ``/metrics`` (labelled with the worker's pid) has pinned to that worker.
"""

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

import httpx
import pytest

from tests.conftest import POSTGRES_URL_VARIABLE, bearer, missing
from tests.postgres import postgres_schema
from tests.server import KeyguardServer, Servers, Worker, create_key, two_instances, workers_of

pytestmark = pytest.mark.slow

WORKERS = 2
PROPAGATION_BOUND = 1.0  # README: a change made anywhere is enforced everywhere within 1 s
USAGE_FLUSH_INTERVAL = 1.0  # the default, which these servers run with
FLUSH_AND_READ = 0.3
POLL_TIMEOUT = 3.0  # polls run past the bound, so that a slow propagation is measured
CONFIRMATIONS = 5  # answers in a row that show a worker settled
# A write route of each scope group that has one.
WRITE_ROUTES = {
    "numbers": ("DELETE", "/v1/buy/cart"),
    "trunks": ("POST", "/v1/trunks"),
    "calls": ("POST", "/v1/calls"),
    "messages": ("POST", "/v3/messages"),
    "campaigns": ("POST", "/v1/short-links"),
    "two_fa": ("POST", "/v1/two-fa/verification"),
    "validator": ("POST", "/v1/validation"),
    "webhooks": ("DELETE", "/v1/calls/webhooks"),
}


class Pair(NamedTuple):
    a: KeyguardServer
    b: KeyguardServer
    admin: str  # the account's full-access key


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    server = os.environ.get(POSTGRES_URL_VARIABLE)
    if not server:
        missing(
            f"{POSTGRES_URL_VARIABLE} is not set. These tests run several keyguard instances on"
            " one PostgreSQL server and exist for nothing else; set it, e.g."
            f" {POSTGRES_URL_VARIABLE}=postgresql://postgres@127.0.0.1:5432/test (.ci/run does)."
        )
    with postgres_schema(server) as url:
        yield url


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Pair]:
    settings = {"KEYGUARD_DATABASE_URL": database}
    with Servers(tmp_path_factory.mktemp("scale-out")) as servers:
        yield Pair(*two_instances(servers, WORKERS, settings))


@pytest.fixture
def api_a(pair: Pair) -> Iterator[httpx.Client]:
    """A's management API, as the account's full-access key."""
    with pair.a.client(pair.admin) as client:
        yield client


@pytest.fixture
def api_b(pair: Pair) -> Iterator[httpx.Client]:
    with pair.b.client(pair.admin) as client:
        yield client


def forward(client: httpx.Client, token: str, method: str, uri: str) -> int:
    """``/auth/forward``'s status for a request, asked as nginx's ``auth_request`` asks."""
    headers = {**bearer(token), "X-Original-Method": method, "X-Original-URI": uri}
    return client.get("/auth/forward", headers=headers).status_code


class Probe(NamedTuple):
    """A request to the protected API, and the answer it should now get."""

    token: str
    method: str
    uri: str
    status: int

    def ask(self, worker: Worker) -> int:
        return forward(worker.client, self.token, self.method, self.uri)


def settled(workers: list[Worker], probe: Probe, since: float) -> dict[str, float]:
    """Poll every worker until it answers ``probe.status``; each one's delay from ``since``.

    A worker counts as settled at its first such answer, and must then give
    it ``CONFIRMATIONS`` times in a row.
    """
    delays: dict[str, float] = {}
    last: dict[str, int] = {}
    while len(delays) < len(workers):
        assert time.monotonic() - since < POLL_TIMEOUT, (
            f"workers {sorted(set(last) - set(delays))} still answer {last} after"
            f" {POLL_TIMEOUT:g} s, not {probe.status}"
        )
        for worker in workers:
            if worker.pid not in delays:
                last[worker.pid] = probe.ask(worker)
                if last[worker.pid] == probe.status:
                    delays[worker.pid] = time.monotonic() - since
    for worker in workers:
        answers = [probe.ask(worker) for _ in range(CONFIRMATIONS)]
        assert answers == [probe.status] * CONFIRMATIONS, f"worker {worker.pid}: {answers}"
        worker.still_same()
    return delays


def race(actions: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run the actions at once, each on its own thread; their responses in order."""
    barrier = threading.Barrier(len(actions))

    def run(action: Callable[[], httpx.Response]) -> httpx.Response:
        barrier.wait()
        return action()

    with ThreadPoolExecutor(len(actions)) as pool:
        return list(pool.map(run, actions))


# -- propagation --------------------------------------------------------------


def create(api: httpx.Client, _reader: dict[str, Any]) -> Probe:
    key = create_key(api, scopes_enabled=True, messages={"allow": "read"})
    return Probe(key["value"], "GET", "/v3/messages", 200)


def widen_scope(api: httpx.Client, reader: dict[str, Any]) -> Probe:
    answer = api.patch(f"/v1/api-keys/{reader['id']}", json={"messages": {"allow": "write"}})
    assert answer.status_code == 200, answer.text
    return Probe(reader["value"], "POST", "/v3/messages", 200)


def deactivate(api: httpx.Client, reader: dict[str, Any]) -> Probe:
    answer = api.patch(f"/v1/api-keys/{reader['id']}/deactivate")
    assert answer.status_code == 200, answer.text
    return Probe(reader["value"], "GET", "/v3/messages", 401)


def delete(api: httpx.Client, reader: dict[str, Any]) -> Probe:
    answer = api.delete(f"/v1/api-keys/{reader['id']}")
    assert answer.status_code == 200, answer.text
    return Probe(reader["value"], "GET", "/v3/messages", 401)


@pytest.mark.parametrize(
    "change",
    [create, widen_scope, deactivate, delete],
    ids=["create", "scope read to write", "deactivate", "delete"],
)
def test_a_change_through_a_is_enforced_by_every_worker_of_b_within_one_second(
    pair: Pair, api_a: httpx.Client, change: Callable[[httpx.Client, dict[str, Any]], Probe]
) -> None:
    reader = create_key(api_a, scopes_enabled=True, messages={"allow": "read"})
    with workers_of(pair.b) as workers:
        # Before the change, B allows reading and refuses writing.
        settled(workers, Probe(reader["value"], "GET", "/v3/messages", 200), time.monotonic())
        settled(workers, Probe(reader["value"], "POST", "/v3/messages", 403), time.monotonic())

        probe = change(api_a, reader)
        acknowledged = time.monotonic()
        delays = settled(workers, probe, acknowledged)

    shown = ", ".join(f"worker {pid}: {delay * 1000:.1f} ms" for pid, delay in delays.items())
    print(f"{change.__name__} through A, enforced by B: {shown}")
    assert max(delays.values()) < PROPAGATION_BOUND, shown


def test_an_expiry_set_through_a_is_enforced_by_every_worker_of_both_within_one_second(
    pair: Pair, api_a: httpx.Client
) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    key = create_key(api_a, expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
    with workers_of(pair.a) as workers_a, workers_of(pair.b) as workers_b:
        workers = workers_a + workers_b
        settled(workers, Probe(key["value"], "GET", "/v3/messages", 200), time.monotonic())

        time.sleep(max(0.0, expires.timestamp() - time.time()))
        instant = time.monotonic()
        delays = settled(workers, Probe(key["value"], "GET", "/v3/messages", 401), instant)

    shown = ", ".join(f"worker {pid}: {delay * 1000:.1f} ms" for pid, delay in delays.items())
    print(f"expiry enforced after the instant by A and B: {shown}")
    assert max(delays.values()) < PROPAGATION_BOUND, shown


def test_last_used_at_of_a_key_used_only_through_b_shows_through_a(
    pair: Pair, api_a: httpx.Client
) -> None:
    key = create_key(api_a, scopes_enabled=True, messages={"allow": "read"})
    path = f"/v1/api-keys/{key['id']}"
    with workers_of(pair.b) as workers:
        # A refusal is not a use: B learns of the key without using it.
        settled(workers, Probe(key["value"], "POST", "/v3/messages", 403), time.monotonic())
        assert api_a.get(path).json()["last_used_at"] is None

        used_at = datetime.now(UTC).replace(microsecond=0)
        assert forward(workers[0].client, key["value"], "GET", "/v3/messages") == 200
        used, answered_at = time.monotonic(), datetime.now(UTC)

    while (shown := api_a.get(path).json()["last_used_at"]) is None:
        assert time.monotonic() - used < POLL_TIMEOUT, "A never showed the use through B"
        time.sleep(0.02)
    lag = time.monotonic() - used
    print(f"last_used_at of a use through B showed through A after {lag:.3f} s")
    # README: other processes lag the latest use by at most one flush interval (1 s by
    # default), plus the flush's own write and A's read.
    assert lag < USAGE_FLUSH_INTERVAL + FLUSH_AND_READ, lag
    assert used_at <= datetime.fromisoformat(shown) <= answered_at, (shown, used_at)


# -- races ----------------------------------------------------------------------


def test_concurrent_patches_through_both_instances_lose_no_field(
    pair: Pair, api_a: httpx.Client, api_b: httpx.Client
) -> None:
    key = create_key(api_a, scopes_enabled=True)
    path = f"/v1/api-keys/{key['id']}"

    answers = race(
        [
            partial((api_a, api_b)[number % 2].patch, path, json={group: {"allow": "write"}})
            for number, group in enumerate(WRITE_ROUTES)
        ]
    )

    assert [answer.status_code for answer in answers] == [200] * len(WRITE_ROUTES)
    for api in (api_a, api_b):
        stored = api.get(path).json()
        assert {group: stored[group]["allow"] for group in WRITE_ROUTES} == dict.fromkeys(
            WRITE_ROUTES, "write"
        )
    since = time.monotonic()
    for server in (pair.a, pair.b):
        with workers_of(server) as workers:
            for method, uri in WRITE_ROUTES.values():
                settled(workers, Probe(key["value"], method, uri, 200), since)


def test_a_delete_racing_updates_through_both_instances_leaves_the_key_deleted(
    pair: Pair, api_a: httpx.Client, api_b: httpx.Client
) -> None:
    for _round in range(3):
        key = create_key(api_a)
        path = f"/v1/api-keys/{key['id']}"

        answers = race(
            [
                partial(api_a.patch, path, json={"label": "renamed by A"}),
                partial(api_b.patch, path, json={"calls": {"allow": "read"}}),
                partial(api_a.patch, path, json={"scopes_enabled": True}),
                partial(api_b.delete, path),
                partial(api_a.patch, path, json={"restricted": False}),
                partial(api_b.patch, path, json={"label": "renamed by B"}),
            ]
        )

        assert answers[3].status_code == 200, answers[3].text
        assert {answer.status_code for answer in answers} <= {200, 404}
        for api in (api_a, api_b):
            assert api.get(path).status_code == 404
            assert api.delete(path).status_code == 404
            assert key["id"] not in [listed["id"] for listed in api.get("/v1/api-keys").json()]
        since = time.monotonic()
        for server in (pair.a, pair.b):
            with workers_of(server) as workers:
                settled(workers, Probe(key["value"], "GET", "/v3/messages", 401), since)


def test_concurrent_creates_through_both_instances_get_unique_ids(
    pair: Pair, api_a: httpx.Client, api_b: httpx.Client
) -> None:
    answers = race(
        [
            partial(
                (api_a, api_b)[number % 2].post, "/v1/api-keys", json={"label": f"race {number}"}
            )
            for number in range(12)
        ]
    )

    assert [answer.status_code for answer in answers] == [200] * 12
    created = {answer.json()["id"]: answer.json() for answer in answers}
    assert len(created) == 12, sorted(answer.json()["id"] for answer in answers)
    assert len({key["value"] for key in created.values()}) == 12
    for api in (api_a, api_b):
        listed = {key["id"]: key["label"] for key in api.get("/v1/api-keys").json()}
        assert {key_id: listed.get(key_id) for key_id in created} == {
            key_id: key["label"] for key_id, key in created.items()
        }
    since = time.monotonic()
    for server in (pair.a, pair.b):
        with workers_of(server) as workers:
            for key in created.values():
                settled(workers, Probe(key["value"], "GET", "/v3/messages", 200), since)
