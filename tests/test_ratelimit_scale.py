"""One rate limit across real processes: two instances x two workers on one
PostgreSQL, sharing counts through the database or through Redis; and a Redis
outage, which must not stop decisions.

The load is spread evenly over four connections, each pinned to one worker
(``tests.server.workers_of``), and paced (``benchmarks.accuracy``).
"""

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from functools import partial
from typing import NamedTuple

import httpx
import pytest
from benchmarks.accuracy import FORWARD, Accuracy, forward_headers, spread_load

from tests.conftest import (
    POSTGRES_URL_VARIABLE,
    REDIS_URL_VARIABLE,
    missing,
)
from tests.postgres import postgres_schema
from tests.server import KeyguardServer, Servers, create_key, free_port, two_instances, workers_of

pytestmark = pytest.mark.slow

WORKERS = 2
# Two seconds: a process's share per 100 ms sync is then well above what an even
# load under the limit asks of it (README: shorter windows refuse more of it).
LIMIT, DURATION = 100, 2
SECONDS = 4.0


class Deployment(NamedTuple):
    instances: tuple[KeyguardServer, KeyguardServer]
    admin: str  # the account's full-access key


@pytest.fixture(scope="module", params=["database", "redis"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """Two instances of two workers each on a fresh PostgreSQL schema, their counts
    shared through the database, or through Redis under a prefix of their own."""
    server = os.environ.get(POSTGRES_URL_VARIABLE)
    if not server:
        missing(f"{POSTGRES_URL_VARIABLE} is not set: these tests run two instances on it")
    settings = {}
    if request.param == "redis":
        redis = os.environ.get(REDIS_URL_VARIABLE)
        if not redis:
            missing(f"Redis: set {REDIS_URL_VARIABLE} (e.g. redis://127.0.0.1:6379/0)")
        prefix = f"keyguard-test-{os.urandom(6).hex()}:"
        settings = {"KEYGUARD_REDIS_URL": redis, "KEYGUARD_REDIS_PREFIX": prefix}
    with postgres_schema(server) as url, Servers(tmp_path_factory.mktemp("limits")) as servers:
        settings["KEYGUARD_DATABASE_URL"] = url
        a, b, admin = two_instances(servers, WORKERS, settings)
        time.sleep(1.5)  # a heartbeat: every worker has seen the other three
        yield Deployment((a, b), admin)


def ask(client: httpx.Client, headers: Mapping[str, str]) -> int:
    return client.get(FORWARD, headers=dict(headers)).status_code


def load(deployment: Deployment, rate: float) -> Accuracy:
    """``rate`` requests per second of a new key limited to LIMIT per DURATION,
    spread over the four workers."""
    a, _ = deployment.instances
    with a.client(deployment.admin) as api:
        token = create_key(api, ratelimit={"limit": LIMIT, "duration": DURATION})
    time.sleep(0.5)  # every worker has the key
    with ExitStack() as pinned:
        senders = [
            partial(ask, worker.client)
            for server in deployment.instances
            for worker in pinned.enter_context(workers_of(server))
        ]
        assert len(senders) == 2 * WORKERS
        result = spread_load(
            senders, forward_headers(token["value"]), LIMIT, DURATION, rate, SECONDS
        )
    print(
        f"{rate:g}/s for {SECONDS:g} s, limit {LIMIT}/{DURATION} s: {len(result.accepted)} "
        f"accepted, {result.refused} refused ({result.refused_share:.1%}), at most "
        f"{result.most_in_any_window} in any {DURATION} s (bound {result.bound:g})"
    )
    assert result.failed == 0
    return result


def test_over_the_limit_any_window_accepts_at_most_a_tenth_more(deployment: Deployment) -> None:
    result = load(deployment, rate=2 * LIMIT / DURATION)

    assert result.most_in_any_window <= result.bound
    assert len(result.accepted) >= 0.8 * LIMIT * SECONDS / DURATION  # and the limit is used


def test_under_the_limit_at_most_one_request_in_twenty_is_refused(
    deployment: Deployment,
) -> None:
    result = load(deployment, rate=0.8 * LIMIT / DURATION)

    assert result.refused_share <= 0.05


# -- Redis out of reach -----------------------------------------------------------------


def test_with_redis_out_of_reach_decisions_go_on_against_the_process_share(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with Servers(tmp_path_factory.mktemp("outage")) as servers:
        server = servers("alone", settings={"KEYGUARD_REDIS_URL": closed})
        admin: str = server.create_account("acme")["api_key"]["value"]
        server.start()
        with server.client(admin) as api:
            token = create_key(api, ratelimit={"limit": 10, "duration": 3600})["value"]
        with httpx.Client(base_url=server.base_url, timeout=5) as client:
            timed = []
            for _ in range(15):
                started = time.perf_counter()
                status = client.get("/auth/forward", headers=forward_headers(token)).status_code
                timed.append((status, time.perf_counter() - started))
            health = client.get("/healthz")

    statuses = [status for status, _ in timed]
    assert statuses == [200] * 10 + [429] * 5  # alone, its share is the whole limit
    assert max(seconds for _, seconds in timed) < 0.25  # no decision waited on Redis
    assert health.status_code == 200
