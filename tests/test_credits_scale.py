"""Usage credits across real processes: two instances x two workers on one
PostgreSQL, a load spread evenly over the four (``tests.server.workers_of``), and
a worker killed with SIGKILL while it holds a lease.

README, "Usage credits": never more successes than credits; at least
``credits - processes x MAX_LEASE`` when the load is spread; unused leases back
within a few seconds when idle (each process keeps one credit of a key).
"""

import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from typing import NamedTuple

import httpx
import pytest
from benchmarks.accuracy import forward_headers, spread_load
from benchmarks.credits import ask

from keyguard.credits import IDLE_RETURN, MAX_LEASE
from tests.conftest import POSTGRES_URL_VARIABLE, missing
from tests.postgres import postgres_schema
from tests.server import KeyguardServer, Servers, create_key, two_instances, workers_of

pytestmark = pytest.mark.slow

WORKERS = 2
PROCESSES = 2 * WORKERS


class Deployment(NamedTuple):
    instances: tuple[KeyguardServer, KeyguardServer]
    admin: str


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    server = os.environ.get(POSTGRES_URL_VARIABLE)
    if not server:
        missing(f"{POSTGRES_URL_VARIABLE} is not set: these tests run two instances on it")
    with postgres_schema(server) as url, Servers(tmp_path_factory.mktemp("credits")) as servers:
        a, b, admin = two_instances(servers, WORKERS, {"KEYGUARD_DATABASE_URL": url})
        yield Deployment((a, b), admin)


def credited_key(deployment: Deployment, credits: int) -> dict[str, object]:
    with deployment.instances[0].client(deployment.admin) as api:
        key = create_key(api, remaining=credits)
    time.sleep(0.5)  # every worker has the key, and its first lease
    return key


def remaining(deployment: Deployment, key_id: object) -> int:
    with deployment.instances[1].client(deployment.admin) as api:
        shown: int = api.get(f"/v1/api-keys/{key_id}").json()["remaining"]
    return shown


def spread(deployment: Deployment, token: str, rate: float, seconds: float) -> tuple[int, int]:
    """``rate`` requests per second over the four workers: (allowed, refused)."""
    with ExitStack() as pinned:
        senders = [
            partial(ask, worker.client)
            for server in deployment.instances
            for worker in pinned.enter_context(workers_of(server))
        ]
        assert len(senders) == PROCESSES
        result = spread_load(senders, forward_headers(token), 1, 1, rate, seconds)
    assert result.failed == 0
    return len(result.accepted), result.refused


def test_a_spread_load_spends_the_credits_and_never_more(deployment: Deployment) -> None:
    credits = 600
    key = credited_key(deployment, credits)

    allowed, refused = spread(deployment, str(key["value"]), rate=400, seconds=3.0)
    print(f"{credits} credits, about 1200 requests over {PROCESSES} processes: {allowed} allowed")

    assert credits - PROCESSES * MAX_LEASE <= allowed <= credits
    assert refused >= 1200 - credits - 10  # the rest were refused, not failed


def test_unused_leases_go_back_within_a_few_seconds(deployment: Deployment) -> None:
    credits = 2000
    key = credited_key(deployment, credits)

    allowed, _ = spread(deployment, str(key["value"]), rate=200, seconds=2.0)
    time.sleep(IDLE_RETURN + 1.0)
    left = remaining(deployment, key["id"])
    print(f"{credits} credits, {allowed} allowed, {left} left after idling")

    assert allowed >= 0.95 * 400  # the load was under the credits: nearly all allowed
    assert credits - allowed - PROCESSES <= left <= credits - allowed  # one each is kept


def test_a_worker_killed_holding_a_lease_never_grants_more_than_exist(
    deployment: Deployment,
) -> None:
    credits = 500
    key = credited_key(deployment, credits)
    headers = forward_headers(str(key["value"]))
    allowed = 0
    with workers_of(deployment.instances[0]) as workers:
        doomed = workers[0]
        for _ in range(150):  # a steady load on one worker grows its lease
            allowed += ask(doomed.client, headers) == 200
            time.sleep(0.002)
        os.kill(int(doomed.pid), signal.SIGKILL)
    allowed += drain(deployment, headers)
    print(f"{credits} credits, a worker killed holding a lease: {allowed} allowed in all")

    assert credits - MAX_LEASE - PROCESSES <= allowed <= credits


def drain(deployment: Deployment, headers: dict[str, str]) -> int:
    """Requests to every instance until each has refused for two seconds."""
    allowed, refused_since = 0, None
    with ExitStack() as open_:
        clients = [
            open_.enter_context(httpx.Client(base_url=server.base_url, timeout=5))
            for server in deployment.instances
        ]
        while refused_since is None or time.monotonic() - refused_since < 2.0:
            for client in clients:
                try:
                    status = ask(client, headers)
                except httpx.TransportError:  # the killed worker's connection
                    continue
                if status == 200:
                    allowed, refused_since = allowed + 1, None
                else:
                    refused_since = refused_since or time.monotonic()
            time.sleep(0.005)
    return allowed
